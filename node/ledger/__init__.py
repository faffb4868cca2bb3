"""LMDB storage: blocks, the state, the transaction index and the consensus log."""

from node.ledger.store import Head, Ledger, LedgerError

__all__ = ["Head", "Ledger", "LedgerError"]
