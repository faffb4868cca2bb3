"""PBFT replica as a pure state machine: (state, message) -> actions."""

from node.consensus.messages import Commit, ConsensusError, Prepare, PrePrepare, decode_message
from node.consensus.replica import Broadcast, Deliver, Replica

__all__ = ["Broadcast", "Commit", "ConsensusError", "Deliver", "PrePrepare", "Prepare", "Replica", "decode_message"]
