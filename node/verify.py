"""Offline ledger verification: hash links, Merkle roots, certificates, and a full replay of the
state machine from genesis compared with every header's state root and with the stored state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from node.block import GENESIS_PREV, Block, BlockError, verify_cert
from node.genesis import Genesis
from node.ledger import Ledger
from node.state import apply_block
from node.tx import Tx, TxError
from node.wire import WireError


@dataclass
class Report:
    height: int = 0
    transactions: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_ledger(ledger_dir: str | Path, genesis: Genesis, max_errors: int = 20) -> Report:
    rep = Report()
    led = Ledger(ledger_dir, readonly=True)
    try:
        state: dict[bytes, bytes] = {}
        prev_hash, root, prev_time = GENESIS_PREV, genesis.state_root, 0
        expected = 1
        keys = genesis.validator_keys
        for height, raw in led.iter_blocks(1):
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
            res = apply_block(state.get, txs, height, h.time_ms, root)
            state.update(res.writes)
            if res.state_root != h.state_root:
                rep.errors.append(f"{where}: state root differs from replaying its transactions")
            root, prev_hash, prev_time = h.state_root, b.hash, h.time_ms
            rep.height = height
            rep.transactions += len(txs)
        head = led.head()
        if head is not None and (head.height != rep.height or head.hash != prev_hash):
            rep.errors.append(f"head record (height {head.height}) does not match the last block ({rep.height})")
        stored = dict(led.iter_state())
        if stored != state:
            diff = sorted(set(stored) ^ set(state)) + sorted(k for k in set(stored) & set(state) if stored[k] != state[k])
            rep.errors.append(f"stored state differs from the replayed state at {len(diff)} keys "
                              f"(first {diff[0][:1]!r} {diff[0][1:9].hex()}…)")
    finally:
        led.close()
    return rep
