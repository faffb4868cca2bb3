"""PBFT replica as a pure state machine: (state, message or tick) -> actions."""

from node.consensus.messages import (
    CertifiedBlock,
    Commit,
    ConsensusError,
    Prepare,
    PrePrepare,
    Status,
    decode_message,
)
from node.consensus.replica import Broadcast, Catchup, Deliver, Replica, Send

__all__ = ["Broadcast", "Catchup", "CertifiedBlock", "Commit", "ConsensusError", "Deliver", "PrePrepare", "Prepare",
           "Replica", "Send", "Status", "decode_message"]
