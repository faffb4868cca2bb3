"""Group commit for blob uploads: the API hands each upload here and awaits it; one worker thread
imports the waiting uploads (UnixFS, CIDs) and stores them all in one synced LMDB transaction. The
event loop (which also runs PBFT) never blocks on an fsync, and under load there is one fsync per
batch instead of one per upload. An upload is acknowledged only once its batch is durable."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid
from node.ipfs.unixfs import import_bytes

MAX_BATCH = 256


class BlobWriter:
    def __init__(self, store: BlockStore, profile: str = "helia-default") -> None:
        self.store, self.profile = store, profile
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-writer")
        self.batches = 0

    async def put(self, data: bytes) -> tuple[Cid, list[Cid]]:
        """Store a blob durably; returns its root CID and every block's CID."""
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=4 * MAX_BATCH)  # bounded: a flood of uploads waits here
            self._task = asyncio.create_task(self._run(), name="blob-writer")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((data, fut))
        return await fut

    def _write(self, batch: list[bytes]) -> list[tuple[Cid, list[Cid]] | BaseException]:
        out: list = []
        dags = []
        for data in batch:
            try:
                root, blocks = import_bytes(data, self.profile)
            except Exception as exc:  # noqa: BLE001 - reported to that upload alone
                out.append(exc)
                continue
            dags.append((root, blocks.items(), len(data)))
            out.append((root, list(blocks)))
        self.store.put_dags(dags, upload=True)  # standalone uploads: collected unless a write pins them
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._pool, self._write, [d for d, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the whole batch failed to store
                results = [exc] * len(batch)
            self.batches += 1
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)
