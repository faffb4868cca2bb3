"""Offline ledger verification: hash links, Merkle roots, certificates, and a full replay of the
state machine from genesis compared with every header's state root and with the stored state.

A ledger that starts from a certified checkpoint (restored from a snapshot or by state transfer,
node/checkpoint.py) holds no blocks below it and not the state they led to, so it is checked from the
checkpoint on: the checkpoint block's certificate, then every later block's links, Merkle root and
certificate, and the stored state against the head's certified root. Its transactions are not
replayed (there is no state below the head to replay them on); each later block's state root is
certified by 2f+1 validators, and the state the node serves is checked against the latest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from node.block import GENESIS_PREV, Block, BlockError, verify_cert
from node.genesis import Genesis
from node.ledger import Ledger
from node.state import apply_block, smt
from node.tx import Tx, TxError
from node.wire import WireError

log = logging.getLogger("medchain.verify")


@dataclass
class Report:
    height: int = 0
    transactions: int = 0
    base: int = 0  # the checkpoint the ledger starts from (0: genesis, fully replayed)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_ledger(ledger_dir: str | Path, genesis: Genesis, max_errors: int = 20) -> Report:
    rep = Report()
    led = Ledger(ledger_dir, readonly=True)
    try:
        state: dict[bytes, bytes] = {}
        tree: dict[bytes, bytes] = {}
        prev_hash, prev_time = GENESIS_PREV, 0
        rep.base = led.base_height()
        replay = rep.base == 0
        expected = rep.base or 1
        keys = genesis.validator_keys
        mark = led.network()  # the network the ledger was first run on: a copied-in genesis is named
        if mark is not None and mark != genesis.network:
            rep.errors.append(f"the ledger was first run on network {mark}, not this genesis's {genesis.network}")
        for height, raw in led.iter_blocks(expected):
            if len(rep.errors) >= max_errors:
                break
            where = f"block {height}"
            if height != expected:
                rep.errors.append(f"{where}: gap, expected height {expected}")
            expected = height + 1
            try:
                b = Block.decode(raw)
            except BlockError as exc:
                rep.errors.append(f"{where}: does not decode: {exc}")
                break
            h = b.header
            if h.height != height or h.chain_id != genesis.chain_id:
                rep.errors.append(f"{where}: header says height {h.height} chain {h.chain_id!r}")
            if height == rep.base:
                prev_hash = h.prev_hash  # the checkpoint: its parent is not held here
            if h.prev_hash != prev_hash:
                rep.errors.append(f"{where}: previous-hash link broken")
            if not b.check_tx_root():
                rep.errors.append(f"{where}: Merkle root does not match its transactions")
            if not verify_cert(b, keys):
                rep.errors.append(f"{where}: commit certificate invalid")
            if h.time_ms < prev_time:
                rep.errors.append(f"{where}: time goes backwards")
            try:
                txs = [Tx.decode(t, genesis.chain_id) for t in b.txs]
            except (TxError, WireError) as exc:
                rep.errors.append(f"{where}: invalid transaction: {exc}")
                break
            if replay:
                res = apply_block(state.get, txs, height, h.time_ms, tree.get, genesis.rules)
                state.update(res.writes)
                tree.update(res.nodes)
                if res.state_root != h.state_root:
                    rep.errors.append(f"{where}: state root differs from replaying its transactions")
            prev_hash, prev_time = b.hash, h.time_ms
            rep.height = height
            rep.transactions += len(txs)
        head = led.head()
        if head is not None and (head.height != rep.height or head.hash != prev_hash):
            rep.errors.append(f"head record (height {head.height}) does not match the last block ({rep.height})")
        stored = dict(led.iter_state()) if replay else state
        if stored != state:
            diff = sorted(set(stored) ^ set(state)) + sorted(k for k in set(stored) & set(state) if stored[k] != state[k])
            rep.errors.append(f"stored state differs from the replayed state at {len(diff)} keys "
                              f"(first {diff[0][:1]!r} {diff[0][1:9].hex()}…)")
        rep.errors += check_stored_state(led)
    finally:
        led.close()
    return rep


def check_stored_state(led: Ledger) -> list[str]:
    """Recompute the state root from every stored key and compare it with the head block's
    (certified) root, and the stored tree nodes with the ones that state gives. [] if they agree."""
    head = led.head()
    if head is None:
        return []
    state = dict(led.iter_state())
    root, nodes = smt.update({}.get, state)
    errors = []
    if head.height == 0:
        if state:
            errors.append(f"no block is committed, yet {len(state)} state keys are stored")
    elif (blk := led.block(head.height)) is None or blk.header.state_root != head.state_root:
        errors.append(f"the head record's state root is not block {head.height}'s")
    elif root != head.state_root:
        errors.append(f"stored state ({len(state)} keys) has root {root.hex()[:16]}…, but block {head.height} "
                      f"certifies {head.state_root.hex()[:16]}…")
    stored = dict(led.iter_nodes())
    if stored != nodes:
        bad = len(set(stored) ^ set(nodes)) + sum(1 for k in set(stored) & set(nodes) if stored[k] != nodes[k])
        errors.append(f"stored state tree differs from the stored state at {bad} nodes")
    return errors


def other_network(led: Ledger, genesis: Genesis, network: str) -> str | None:
    """Why `led` is not a ledger of the network that `genesis` (named `network`) starts, or None:
    a home whose genesis file was replaced (`operator install-genesis --force`, a copy) must not run
    on, serve or hand out as a snapshot another network's blocks and state."""
    mark = led.network()
    if mark is not None and mark != network:
        return f"it was first run on network {mark}, not this genesis's {network}"
    head = led.head()
    if head is None:
        return None
    if head.height == 0:
        return None if head.state_root == genesis.state_root else \
            "its empty chain starts from another genesis state (other validators or chain id)"
    blk = led.block(head.height)
    if blk is None:
        return None  # check_stored_state says what is wrong with it
    if blk.header.chain_id != genesis.chain_id:
        return f"its blocks are of chain {blk.header.chain_id!r}, not {genesis.chain_id!r}"
    if not verify_cert(blk, genesis.validator_keys):
        return f"its block {head.height} is not certified by 2f+1 of this genesis's validators"
    return None


def refuse_unless_this_network(led: Ledger, genesis: Genesis, network: str) -> None:
    """At a validator's start: exit (code 2: a supervisor does not restart it) if its ledger is of
    another network; a ledger without the mark (an older release's) gets this network's."""
    why = other_network(led, genesis, network)
    if why is not None:
        log.critical("the ledger at %s is not this network's: %s; a home runs one network (move the ledger "
                     "away to start this one afresh)", led.env.path(), why)
        raise SystemExit(2)
    if led.network() is None:
        led.mark_network(network)


def refuse_unless_certified_state(led: Ledger) -> None:
    """At a validator's start: exit (code 3) unless the stored state is the one the last certified
    block commits to, so a record rewritten behind the chain's back is never enforced or served."""
    t0 = time.monotonic()
    errors = check_stored_state(led)
    if errors:
        for e in errors:
            log.critical("state check failed: %s", e)
        log.critical("stored state does not match the certified state root: refusing to serve")
        raise SystemExit(3)
    log.info("stored state matches the certified state root (%.2f s)", time.monotonic() - t0)
