"""The driver that wires the layers: mempool -> block building -> PBFT replica -> ledger.

All blocking work (execution, LMDB commits with fsync) runs in a worker thread so the asyncio
loop keeps serving the API. Blocks come only from the replica's Deliver action: with a single
validator that is PBFT with a quorum of one, the same path the multi-validator network uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node import merkle
from node.block import Block, Header
from node.consensus import Broadcast, Deliver, Replica
from node.crypto import ecdsa
from node.crypto.ecdsa import verify_batch_fallback as verify_batch
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid, CidError
from node.ledger import Ledger
from node.mempool import AdmissionError, Mempool
from node.metrics import Metrics
from node.state import CODES, OK, Overlay, apply_block, check_tx, keys
from node.tx import KIND_WRITE, Tx, TxError
from node.tx.model import BAD_SIGNATURE
from node.wire import MAX_TX_BYTES, WireError, decode

log = logging.getLogger("medchain.validator")

# How an admission check's state code maps to an HTTP status.
_CODE_STATUS = {2: 422, 3: 403, 4: 404, 5: 409, 6: 409, 7: 422, 8: 422}


@dataclass
class Executed:
    block: Block
    txs: list[Tx]
    codes: list[int]
    writes: dict[bytes, bytes]


class Validator:
    def __init__(self, home: str | Path, identity: Identity | None = None, genesis: Genesis | None = None) -> None:
        self.home = Path(home)
        self.genesis = genesis or Genesis.load(self.home / "genesis.json")
        self.identity = identity or Identity.load(self.home / "node_key.json")
        self.chain_id = self.genesis.chain_id
        self.index = self.genesis.index_of(self.identity.public_key)
        self.n = len(self.genesis.validators)
        p = self.genesis.params
        self.params = p
        self.ledger = Ledger(self.home / "ledger", genesis_root=self.genesis.state_root)
        self.blobs = BlockStore(self.home / "blobs")
        self.mempool = Mempool(p.mempool_capacity, p.sender_rate, p.sender_burst)
        self.metrics = Metrics()
        head = self.ledger.head()
        self.replica = Replica(self.chain_id, self.n, self.index, self.identity.sign, self._verify_vote,
                               self._check_block, last_delivered=self._last_seq(), view=self._last_view())
        self.metrics.height.set(head.height)
        self._executed: dict[bytes, Executed] = {}
        self._rejected: OrderedDict[bytes, str] = OrderedDict()
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._submitted_at: dict[bytes, float] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        log.info("validator %d of %d, chain %s, height %d", self.index, self.n, self.chain_id, head.height)

    # ---- start and stop ----------------------------------------------------------------------
    def _last_seq(self) -> int:
        head = self.ledger.head()
        return 0 if head.height == 0 else self.ledger.block(head.height).header.seq

    def _last_view(self) -> int:
        head = self.ledger.head()
        return 0 if head.height == 0 else self.ledger.block(head.height).header.view

    async def start(self) -> None:
        self._task = asyncio.create_task(self._produce(), name="producer")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        self._worker.shutdown(wait=True)
        self.ledger.close()
        self.blobs.close()

    # ---- admission -----------------------------------------------------------------------------
    def committed_nonce(self, addr: bytes) -> int:
        v = self.ledger.get_state(keys.nonce(addr))
        return 0 if v is None else decode(v)

    def _reject(self, txid: bytes | None, status: int, reason: str,
                retry_after: float | None = None) -> AdmissionError:
        self.metrics.rejected.labels(reason.split(":")[0]).inc()
        if txid is not None:
            self._rejected[txid] = reason
            while len(self._rejected) > 100_000:
                self._rejected.popitem(last=False)
        return AdmissionError(status, reason, retry_after)

    def submit(self, raw: bytes) -> bytes:
        """Admit one signed transaction; returns its id or raises AdmissionError (a 4xx reason)."""
        res = self.submit_many([raw])[0]
        if isinstance(res, AdmissionError):
            raise res
        return res

    def submit_many(self, raws: list[bytes]) -> list[bytes | AdmissionError]:
        """Admit a batch: parse each, verify all signatures in one batch call, then admit in order."""
        out: list[bytes | AdmissionError] = []
        parsed: list[tuple[int, Tx]] = []
        for raw in raws:
            try:
                tx = Tx.decode(raw, check_sig=False)
                if tx.chain_id != self.chain_id:
                    out.append(self._reject(tx.id, 400, f"wrong chain id: {tx.chain_id!r}, "
                                                        f"this chain is {self.chain_id!r}"))
                    continue
                parsed.append((len(out), tx))
                out.append(tx.id)
            except (TxError, WireError) as exc:
                txid = ecdsa.sha256(raw) if len(raw) <= MAX_TX_BYTES else None
                out.append(self._reject(txid, 400, f"invalid transaction: {exc}"))
        oks = verify_batch([(tx.sender, tx.digest, tx.sig) for _, tx in parsed])
        now_ms, now = self._now_ms(), time.monotonic()
        view = Overlay(self.ledger.get_state)
        for (i, tx), ok in zip(parsed, oks, strict=True):
            if not ok:
                out[i] = self._reject(tx.id, 400, f"invalid transaction: {BAD_SIGNATURE}")
                continue
            try:
                self._admit(tx, view, now_ms, now)
            except AdmissionError as exc:
                out[i] = self._reject(tx.id, exc.status, exc.reason, exc.retry_after)
        self.metrics.mempool.set(len(self.mempool))
        self._wake.set()
        return out

    def _admit(self, tx: Tx, view: Overlay, now_ms: int, now: float) -> None:
        if self.ledger.tx_location(tx.id) is not None:
            raise AdmissionError(409, "duplicate: transaction already committed (replay)")
        code = check_tx(view, tx, now_ms)
        if code != OK:
            raise AdmissionError(_CODE_STATUS.get(code, 422), f"refused: {CODES[code]}")
        if tx.kind == KIND_WRITE:
            self._check_blob_present(tx)
        self.mempool.admit(tx, self.committed_nonce(tx.address), now)
        self._rejected.pop(tx.id, None)
        self._submitted_at[tx.id] = now
        self.metrics.admitted.inc()

    def _check_blob_present(self, tx: Tx) -> None:
        try:
            cid = Cid.from_bytes(tx.body.cid)
        except CidError as exc:
            raise AdmissionError(400, f"invalid transaction: bad cid: {exc}") from None
        size = self.blobs.size(cid)
        if size is None:
            raise AdmissionError(422, f"blob not uploaded: upload {cid} before recording it")
        if size != tx.body.size:
            raise AdmissionError(422, f"size mismatch: blob {cid} is {size} bytes, transaction says {tx.body.size}")

    def tx_status(self, txid: bytes) -> dict:
        loc = self.ledger.tx_location(txid)
        if loc is not None:
            height, idx = loc
            block = self.ledger.block(height)
            ids = block.tx_ids
            rec = decode(self.ledger.get_state(keys.receipt(txid)))
            return {"status": "committed", "height": height, "index": idx, "code": rec[2],
                    "result": CODES.get(rec[2], "unknown"), "block_hash": block.hash.hex(),
                    "tx_root": block.header.tx_root.hex(), "tx_count": len(ids),
                    "proof": [p.hex() for p in merkle.proof(ids, idx)]}
        if txid in self.mempool:
            return {"status": "pending"}
        if txid in self._rejected:
            return {"status": "rejected", "reason": self._rejected[txid]}
        return {"status": "unknown"}

    async def wait_committed(self, txid: bytes, timeout: float) -> bool:
        if self.ledger.tx_location(txid) is not None:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(txid, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return self.ledger.tx_location(txid) is not None
        finally:
            lst = self._waiters.get(txid)
            if lst and fut in lst:
                lst.remove(fut)
                if not lst:
                    del self._waiters[txid]

    # ---- block production and consensus ------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _verify_vote(self, index: int, digest: bytes, sig: bytes) -> bool:
        return ecdsa.verify(self.genesis.validator_keys[index], digest, sig)

    def _check_block(self, block: Block) -> bool:
        """A proposal is acceptable iff re-executing it here gives the same header (own proposals are cached)."""
        return block.hash in self._executed

    def _build(self, txs: list[Tx]) -> Executed:
        head = self.ledger.head()
        time_ms = max(self._now_ms(), head.time_ms)
        get, close = self.ledger.state_reader()
        try:
            res = apply_block(get, txs, head.height + 1, time_ms, head.state_root)
        finally:
            close()
        header = Header(self.chain_id, head.height + 1, head.hash, self.replica.view, self.replica.next_seq,
                        time_ms, merkle.root([t.id for t in txs]), res.state_root, self.index)
        return Executed(Block(header, tuple(t.raw for t in txs)), txs, res.codes, res.writes)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.params.block_interval_ms / 1000
        while not self._stopping:
            if not len(self.mempool):
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self.mempool) < self.params.block_max_txs:
                await asyncio.sleep(interval)  # let a batch fill: one round carries many transactions
            if self._stopping or not self.replica.is_primary or self.replica.in_flight():
                await asyncio.sleep(interval)
                continue
            txs = self.mempool.batch(self.params.block_max_txs)
            try:
                ex = await loop.run_in_executor(self._worker, self._build, txs)
                self._executed[ex.block.hash] = ex
                await self._handle(self.replica.propose(ex.block))
            except Exception:  # keep producing: the transactions stay in the pool
                log.exception("block production failed")
                await asyncio.sleep(interval)

    async def _handle(self, actions: list) -> None:
        for act in actions:
            if isinstance(act, Deliver):
                await self._deliver(act.block)
            elif isinstance(act, Broadcast):
                pass  # a single validator has no peers; the p2p adapter sends these

    async def _deliver(self, block: Block) -> None:
        ex = self._executed.pop(block.hash)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self.ledger.commit_block, block, ex.writes)
        self.mempool.remove(ex.txs)
        now = time.monotonic()
        for tx in ex.txs:
            t0 = self._submitted_at.pop(tx.id, None)
            if t0 is not None:
                self.metrics.commit_latency.observe(now - t0)
            for fut in self._waiters.pop(tx.id, ()):
                if not fut.done():
                    fut.set_result(True)
        self.metrics.height.set(block.header.height)
        self.metrics.committed.inc(len(ex.txs))
        self.metrics.mempool.set(len(self.mempool))
        self.mempool.prune_buckets(now)
