"""LMDB storage: blocks, the state, the transaction index and the consensus log."""

from node.ledger.store import Head, Ledger, LedgerError, StateView

__all__ = ["Head", "Ledger", "LedgerError", "StateView"]
