"""PBFT replica as a pure state machine: (state, message or tick) -> actions."""

from node.consensus.actions import Execute
from node.consensus.messages import (
    CertifiedBlock,
    Checkpoint,
    Commit,
    ConsensusError,
    NewView,
    Prepare,
    PrePrepare,
    Status,
    Suspect,
    ViewChange,
    decode_message,
)
from node.consensus.replica import Broadcast, Catchup, Deliver, Persist, Replica, Send, ViewChanged
from node.consensus.state import Ignored, Phase, ReplicaState

__all__ = ["Broadcast", "Catchup", "CertifiedBlock", "Checkpoint", "Commit", "ConsensusError", "Deliver", "Execute", "Ignored",
           "NewView", "Persist", "Phase", "PrePrepare", "Prepare", "Replica", "ReplicaState", "Send", "Status", "Suspect",
           "ViewChange", "ViewChanged", "decode_message"]
