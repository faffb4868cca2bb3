"""Prometheus metrics of one validator (its own registry, so several can share a process).

Names follow the Prometheus conventions: the `medchain_` prefix, `_total` on counters (the client
library appends it), `_seconds` on durations, base units. What the validator already holds (view,
peers, p2p message counts, mempool evictions, the crypto path) is read at scrape time by
`bind()`, so the hot paths do not update it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:  # types only: none of these imports this module
    from node.backlog import Backlog
    from node.consensus import Replica
    from node.mempool import Mempool
    from node.p2p import P2PNode



class Observed(Protocol):
    """What the scrape-time collector reads of a validator (node/validator.py provides it)."""

    replica: Replica
    mempool: Mempool
    backlog: Backlog
    net: P2PNode | None
    synced_blocks: int
    msgs_in: int
    msgs_out: int


XFER_REFUSALS = ("block", "state", "peer", "overtaken")
CONSENSUS_STEPS = ("execute", "persist", "deliver")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("medchain_block_height", "Height of the last committed block", registry=r)
        self.mempool = Gauge("medchain_mempool_transactions", "Transactions waiting in the mempool", registry=r)
        self.admitted = Counter("medchain_tx_admitted", "Transactions admitted to the mempool", registry=r)
        self.committed = Counter("medchain_tx_committed", "Transactions committed in blocks", registry=r)
        self.rejected = Counter("medchain_tx_rejected", "Transactions refused at admission, by reason",
                                ["reason"], registry=r)
        self.commit_latency = Histogram(
            "medchain_commit_latency_seconds", "Admission to commit", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.blobs = Gauge("medchain_blobs_held", "Blocks in the IPFS block store", registry=r)
        self.sidecars_stored = Counter("medchain_sidecars_stored", "Blobs stored from the sidecars of committed "
                                       "writes (no bitswap round)", registry=r)
        self.sidecar_cache = Gauge("medchain_sidecar_cache_bytes", "Bytes of forwarded sidecars held for writes "
                                   "not yet committed", registry=r)
        self.uploads_collected = Counter("medchain_uploads_collected", "Standalone uploads no committed write "
                                         "named within the grace, deleted", registry=r)
        self.blob_integrity = Counter("medchain_blob_integrity_failures", "Stored blocks that failed their hash",
                                      registry=r)
        self.http = Counter("medchain_http_requests", "HTTP requests", ["route", "status"], registry=r)
        # the consensus stage awaits the ledger worker for these steps and handles no message meanwhile:
        # near one second per second, it is the bottleneck (rate() of it, by step)
        self.consensus_wait = Counter("medchain_consensus_wait_seconds", "Seconds the consensus stage awaited a "
                                      "step on the ledger worker (execute, persist, deliver)", ["step"], registry=r)
        for step in CONSENSUS_STEPS:
            self.consensus_wait.labels(step)
        self.throttled = Counter("medchain_throttled", "Requests or messages refused by a rate limit, by scope "
                                 "(client_ip at the API, peer for forwarded transaction batches)", ["scope"],
                                 registry=r)
        # state transfer from a certified checkpoint (node/statesync.py); /v1/status has the same in its
        # state_transfer object. Refusals by reason: "block" (the offered block is not this chain's or not
        # certified by 2f+1 genesis keys), "state" (chunks out of order, over a limit, or not hashing to the
        # block's state root), "peer" (no answer, a refusal, a malformed frame), "overtaken" (blocks brought
        # the ledger past the checkpoint before it was installed)
        self.xfer_started = Counter("medchain_state_transfer_started", "Checkpoint transfers started (a far "
                                    "enough offer taken)", registry=r)
        self.xfer_installed = Counter("medchain_state_transfer_installed", "Checkpoints proven and installed",
                                      registry=r)
        self.xfer_refused = Counter("medchain_state_transfer_refused", "Checkpoint transfers dropped, by reason",
                                    ["reason"], registry=r)
        for reason in XFER_REFUSALS:
            self.xfer_refused.labels(reason)
        self.xfer_chunks = Counter("medchain_state_transfer_chunks", "State chunks received", registry=r)
        self.xfer_bytes = Counter("medchain_state_transfer_received_bytes", "Bytes of checkpoint offers and state "
                                  "chunks received", registry=r)
        self.xfer_height = Gauge("medchain_state_transfer_installed_height", "Height of the last checkpoint "
                                 "installed (0: none)", registry=r)
        self._bound = False

    def bind(self, v: Observed) -> None:
        """Expose what the validator holds, read at scrape time (idempotent)."""
        if self._bound:
            return
        self._bound = True
        self.registry.register(_ValidatorCollector(v))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ValidatorCollector:
    """Gauges and counters computed from the validator's own state when /metrics is scraped."""

    def __init__(self, v: Observed) -> None:
        self.v = v
        self.last_view = v.replica.view
        self.view_changes = 0

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from node.crypto.batch import NATIVE, backend_name
        v = self.v
        view = v.replica.view
        if view > self.last_view:  # each view change moves to a higher view
            self.view_changes += view - self.last_view
            self.last_view = view
        changes = getattr(v.replica, "view_changes", None)  # the replica's own count, when it keeps one
        yield GaugeMetricFamily("medchain_view", "Current PBFT view", value=view)
        yield CounterMetricFamily("medchain_view_changes", "PBFT view changes completed by this validator",
                                  value=self.view_changes if changes is None else changes)
        yield GaugeMetricFamily("medchain_view_changing", "1 while a view change is in progress",
                                value=1.0 if getattr(v.replica, "changing", False) else 0.0)
        r = v.replica
        yield GaugeMetricFamily("medchain_stable_checkpoint", "Height of the last stable PBFT checkpoint",
                                value=r.stable)
        yield GaugeMetricFamily("medchain_consensus_evidence", "Conflicting signed messages kept as evidence "
                                "of a misbehaving validator (details under consensus.evidence in /v1/status)",
                                value=len(r.evidence))
        yield CounterMetricFamily("medchain_state_transfer_blocks", "Blocks fetched from peers by state transfer",
                                  value=v.synced_blocks)
        peers = len(v.net.connected_peers()) if v.net is not None else 0
        yield GaugeMetricFamily("medchain_peers", "Connected validator peers", value=peers)
        msgs = CounterMetricFamily("medchain_p2p_messages", "Validator-to-validator messages", labels=["direction"])
        msgs.add_metric(["in"], v.msgs_in)
        msgs.add_metric(["out"], v.msgs_out)
        yield msgs
        if v.net is not None:
            yield _by_type(v.net)
        dropped = CounterMetricFamily("medchain_p2p_frames_dropped", "Frames dropped unsent from a peer's outbound "
                                      "queue: full (the oldest go) or expired (queued longer than 10 s; PBFT "
                                      "retransmits what still matters)", labels=["reason"])
        st = v.net.stats if v.net is not None else {}
        dropped.add_metric(["queue_full"], st.get("drops", 0))
        dropped.add_metric(["expired"], st.get("expired", 0))
        yield dropped
        yield CounterMetricFamily("medchain_mempool_evictions", "Transactions evicted from a full mempool "
                                  "(the heaviest sender's newest)", value=v.mempool.evictions)
        yield GaugeMetricFamily("medchain_mempool_capacity", "Mempool capacity", value=v.mempool.capacity)
        yield GaugeMetricFamily("medchain_mempool_bytes", "Wire bytes of the transactions pending in the mempool",
                                value=v.mempool.tx_bytes)
        yield GaugeMetricFamily("medchain_mempool_max_bytes", "limits.mempool_mb in bytes: beyond it, 503",
                                value=v.mempool.max_tx_bytes)
        b = v.backlog
        yield GaugeMetricFamily("medchain_admission_backlog_limit", "Client transactions this validator takes on "
                                "(pool and verifier) before answering 503: the chain's commit rate times "
                                "limits.max_queue_s", value=b.limit(time.monotonic()))
        yield CounterMetricFamily("medchain_admission_overloaded", "Client submissions refused with 503 before "
                                  "decoding, the verifier holding the backlog bound's worth (per transaction, "
                                  "the pool's refusals are medchain_tx_rejected{reason=\"mempool full\"})",
                                  value=b.refused)
        native = GaugeMetricFamily("medchain_native_crypto", "1 if the native (Cython) crypto path is in use, "
                                   "else 0; the label names the backend", labels=["backend"])
        native.add_metric([backend_name().split(" (")[0]], 1.0 if NATIVE else 0.0)
        yield native


def _tag_names() -> dict[int, str]:
    from node.consensus import messages as m
    from node.replication import T_HELD
    from node.sidecar import T_TXS
    return {m.T_PREPREPARE: "pre_prepare", m.T_PREPARE: "prepare", m.T_COMMIT: "commit", m.T_STATUS: "status",
            m.T_BLOCK: "certified_block", m.T_VIEWCHANGE: "view_change", m.T_NEWVIEW: "new_view",
            m.T_CHECKPOINT: "checkpoint", m.T_SUSPECT: "suspect", T_TXS: "forwarded_txs",
            T_HELD: "blobs_held"}


def _by_type(net: P2PNode) -> CounterMetricFamily:
    """Validator-to-validator messages by type: in, as delivered; out, one per send or broadcast
    (as medchain_p2p_messages counts them; a direct broadcast is n-1 frames on the wire)."""
    names = _tag_names()
    fam = CounterMetricFamily("medchain_p2p_messages_by_type", "Validator-to-validator messages by type",
                              labels=["direction", "type"])
    for direction, counts in (("in", net.tags_in), ("out", net.tags_out)):
        merged: dict[str, int] = {}
        for tag, c in counts.items():  # written on the asyncio loop only, where the scrape runs too
            name = names.get(tag, "other")
            merged[name] = merged.get(name, 0) + c
        for name, c in sorted(merged.items()):
            fam.add_metric([direction, name], c)
    return fam
