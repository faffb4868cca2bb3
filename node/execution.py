"""Building and checking blocks on top of a tip that may itself be executed but not yet committed
(so the primary can pipeline several proposals). Pure apart from the injected state reader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node import merkle
from node.block import Block, Header
from node.state import apply_block, smt
from node.state.machine import Get
from node.state.rules import NO_ISSUERS, Rules
from node.tx import Tx, TxError
from node.wire import WireError

MAX_FUTURE_MS = 10_000  # a proposal's time may run ahead of our clock by this much


class InvalidBlock(ValueError):
    pass


@dataclass(frozen=True)
class Tip:
    """The state a new block builds on: the committed head or an executed, uncommitted block."""

    height: int
    hash: bytes
    state_root: bytes
    time_ms: int
    get: Get
    tree: smt.GetNode  # the state tree's nodes at this tip
    rules: Rules = NO_ISSUERS  # the genesis's rules, carried from tip to tip


@dataclass
class Executed:
    block: Block
    txs: list[Tx]
    codes: list[int]
    writes: dict[bytes, bytes]
    parent_get: Get
    nodes: dict[bytes, bytes]  # the state tree's dirty nodes, written with the block at commit
    parent_tree: smt.GetNode
    rules: Rules = NO_ISSUERS
    tx_tree: merkle.Tree | None = None  # over the transaction ids (None: no transactions); the
    # header's tx_root is its root, and status polls take their proofs from it after the commit

    # Both readers look their parent up at each call (not a closure over it) so that the pipeline's
    # commit stage can re-point a child at the ledger once its parent commits: a chain of executed
    # blocks then stays as long as the pipeline, instead of reaching back to the process's start.
    def get(self, key: bytes) -> bytes | None:
        v = self.writes.get(key)
        return v if v is not None else self.parent_get(key)

    def tree(self, pos: bytes) -> bytes | None:
        v = self.nodes.get(pos)
        return v if v is not None else self.parent_tree(pos)

    def tip(self) -> Tip:
        h = self.block.header
        return Tip(h.height, self.block.hash, h.state_root, h.time_ms, self.get, self.tree, self.rules)


def build_block(tip: Tip, txs: list[Tx], chain_id: str, view: int, proposer: int, now_ms: int) -> Executed:
    height = tip.height + 1
    time_ms = max(now_ms, tip.time_ms)
    res = apply_block(tip.get, txs, height, time_ms, tip.tree, tip.rules)
    tx_tree = merkle.Tree([t.id for t in txs]) if txs else None
    header = Header(chain_id, height, tip.hash, view, height, time_ms, _tx_root(tx_tree), res.state_root, proposer)
    return Executed(Block(header, tuple(t.raw for t in txs)), txs, res.codes, res.writes, tip.get, res.nodes,
                    tip.tree, tip.rules, tx_tree)


def _tx_root(tx_tree: merkle.Tree | None) -> bytes:
    return merkle.EMPTY_ROOT if tx_tree is None else tx_tree.root


def check_block(block: Block, tip: Tip, chain_id: str, now_ms: int, verified: Callable[[bytes], bool],
                verify_batch: Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]],
                check_time: bool = True, known: Callable[[bytes], Tx | None] = lambda _: None) -> Executed:
    """Re-execute a proposed (or certified) block; raise InvalidBlock unless its header is exactly
    what executing its transactions on `tip` gives. `verified(txid)` skips signatures already
    checked at admission; `known(txid)` gives transactions already parsed (the mempool's), so
    most of a block is not decoded twice."""
    h = block.header
    if h.chain_id != chain_id:
        raise InvalidBlock("wrong chain id")
    if h.height != tip.height + 1 or h.prev_hash != tip.hash:
        raise InvalidBlock(f"block {h.height} does not extend tip {tip.height}")
    if h.time_ms < tip.time_ms:
        raise InvalidBlock(f"block time goes back: {h.time_ms - tip.time_ms} ms before its parent's")
    if check_time and h.time_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidBlock(f"block time is {(h.time_ms - now_ms) / 1000:.1f} s ahead of this validator's clock "
                           f"(at most {MAX_FUTURE_MS / 1000:.0f} s)")
    ids = block.tx_ids
    tx_tree = merkle.Tree(ids) if ids else None
    if _tx_root(tx_tree) != h.tx_root:
        raise InvalidBlock("transaction root mismatch")
    try:
        txs = [known(i) or Tx.decode(raw, chain_id, check_sig=False) for i, raw in zip(ids, block.txs, strict=True)]
    except (TxError, WireError) as exc:
        raise InvalidBlock(f"invalid transaction: {exc}") from None
    if any(t.chain_id != chain_id for t in txs):
        raise InvalidBlock("a transaction of another chain")
    if len({t.id for t in txs}) != len(txs):
        raise InvalidBlock("duplicate transaction in block")
    todo = [t for t in txs if not verified(t.id)]
    if todo and not all(verify_batch([(t.sender, t.digest, t.sig) for t in todo])):
        raise InvalidBlock("a transaction signature does not verify")
    res = apply_block(tip.get, txs, h.height, h.time_ms, tip.tree, tip.rules)
    if res.state_root != h.state_root:
        raise InvalidBlock("state root mismatch")
    return Executed(block, txs, res.codes, res.writes, tip.get, res.nodes, tip.tree, tip.rules, tx_tree)
