"""The replicated state machine: deterministic block execution and the state root."""

from node.state import smt
from node.state.machine import (
    CODES,
    OK,
    Overlay,
    apply_block,
    check_tx,
    genesis_state_root,
    keys,
)

__all__ = ["CODES", "OK", "Overlay", "apply_block", "check_tx", "genesis_state_root", "keys", "smt"]
