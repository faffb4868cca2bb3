"""Group commit of uploads: concurrent puts share synced transactions, each result is its own, and
everything acknowledged is in the (real LMDB) store, also after reopening it."""

from __future__ import annotations

import asyncio

from node.ipfs.blobwriter import BlobWriter
from node.ipfs.blockstore import BlockStore
from node.ipfs.unixfs import import_bytes


def test_concurrent_uploads_are_batched_and_durable(tmp_path):
    blobs = [b"blob %d " % i * (i + 1) for i in range(300)] + [b"", bytes(3 * 1024 * 1024)]

    async def go():
        store = BlockStore(tmp_path / "blobs")
        w = BlobWriter(store)
        try:
            results = await asyncio.gather(*(w.put(b) for b in blobs))
            return results, w.batches
        finally:
            await w.close()
            store.close()

    results, batches = asyncio.run(go())
    assert batches < len(blobs)  # shared transactions
    store = BlockStore(tmp_path / "blobs")
    try:
        for data, (root, _blocks) in zip(blobs, results, strict=True):
            assert root == import_bytes(data, "helia-default")[0]
            assert store.blob_size(root) == len(data)
        assert len(results[-1][1]) > 1  # the 3 MiB blob is a multi-block DAG
    finally:
        store.close()
