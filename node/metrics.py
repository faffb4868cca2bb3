"""Prometheus metrics of one validator (its own registry, so several can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.height = Gauge("medchain_block_height", "Height of the last committed block", registry=r)
        self.mempool = Gauge("medchain_mempool_transactions", "Transactions waiting in the mempool", registry=r)
        self.admitted = Counter("medchain_tx_admitted", "Transactions admitted to the mempool", registry=r)
        self.committed = Counter("medchain_tx_committed", "Transactions committed in blocks", registry=r)
        self.rejected = Counter("medchain_tx_rejected", "Transactions refused at admission", ["reason"], registry=r)
        self.commit_latency = Histogram(
            "medchain_commit_latency_seconds", "Admission to commit", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.blobs = Gauge("medchain_blobs_held", "Blocks in the IPFS block store", registry=r)
        self.blob_integrity = Counter("medchain_blob_integrity_failures", "Stored blocks that failed their hash",
                                      registry=r)
        self.http = Counter("medchain_http_requests", "HTTP requests", ["route", "status"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
