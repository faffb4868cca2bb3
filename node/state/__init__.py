"""The replicated state machine: deterministic block execution and the state root."""

from node.state import keys, smt
from node.state.machine import (
    CODES,
    OK,
    Code,
    Overlay,
    apply_block,
    check_tx,
    genesis_state_root,
)

__all__ = ["CODES", "OK", "Code", "Overlay", "apply_block", "check_tx", "genesis_state_root", "keys", "smt"]
