"""A full disk, in one process (node/storage.py): a single validator whose LMDB map fills, and one
whose home is a size-limited tmpfs that fills. Real LMDB, a real filesystem; the 4-process version
with catch-up from the network is tests/test_disk_full.py."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from pathlib import Path

import lmdb
import pytest

from node.crypto.keys import Identity
from node.genesis import Genesis, Params, init_home
from node.storage import StorageFull, is_storage_error
from node.tx import Profile, Tx
from node.validator import Validator
from node.verify import verify_ledger


@pytest.mark.parametrize("exc, full", [
    (lmdb.MapFullError("mdb_txn_commit: MDB_MAP_FULL"), True),
    (lmdb.DiskError("mdb_txn_commit: No space left on device"), True),
    (lmdb.Error("mdb_txn_commit: Input/output error"), True),  # LMDB's word for a short page write
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (lmdb.PanicError("mdb_txn_begin: MDB_PANIC: Update of meta page failed"), True),
    (lmdb.KeyExistsError("mdb_put: MDB_KEYEXIST"), False),
    (OSError(errno.ENOENT, "No such file or directory"), False),
    (ValueError("bad"), False),
])
def test_storage_errors_are_told_from_other_errors(exc: BaseException, full: bool) -> None:
    assert is_storage_error(exc) is full


def _txs(chain: str, tag: bytes, n: int) -> list[tuple[bytes, None]]:
    """Profile updates from fresh senders, each with long fields so the ledger grows fast."""
    return [(Tx.build(Identity.from_seed(tag + b"%d" % i), chain, 1,
                      Profile("n" * 64, "r" * 64, "o" * 64, bytes(32))).raw, None) for i in range(n)]


def _home(root: Path) -> Path:
    (home,) = init_home(root, "medchain-disk", ["127.0.0.1:1"], int(time.time() * 1000),
                        Params(sender_rate=1e9, sender_burst=1e9, mempool_capacity=100_000))
    return home


async def _fill(v: Validator, tag: bytes, timeout: float = 60.0) -> int:
    """Submit batches until the validator refuses them for its disk; returns how many it admitted."""
    admitted, k = 0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            res = await v.submit_many(_txs(v.chain_id, tag + b"%d-" % k, 500))
        except StorageFull:
            return admitted
        admitted += sum(isinstance(r, bytes) for r in res)
        k += 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"the disk never filled: {v.disk.status()}")


async def _until_stalled(v: Validator, tag: bytes, timeout: float = 30.0) -> None:
    """Once clients are refused for the disk, what was pending may still fit in what is left (a fast
    machine commits nearly all of it before the refusal): other validators' forwarded transactions
    are still admitted (they are the network's), so they are sent until a block's write fails."""
    deadline, k = time.monotonic() + timeout, 0
    while not v.disk.stalled:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the consensus stage to stop: {v.disk.status()}")
        if len(v.mempool) < 1000:
            await v.submit_many(_txs(v.chain_id, tag + b"%d-" % k, 200), forwarded=True)
            k += 1
        await asyncio.sleep(0.05)


async def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_full_map_stops_consensus_refuses_work_and_a_restart_with_a_larger_map_resumes(tmp_path, monkeypatch,
                                                                                       caplog) -> None:
    monkeypatch.setenv("MEDCHAIN_LMDB_MAP_GB", str(16 / 1024))  # 16 MiB maps
    monkeypatch.setenv("MEDCHAIN_DISK_RESERVE_MB", "0")
    home = _home(tmp_path)

    async def full() -> int:
        v = Validator(home)
        await v.start()
        try:
            await _fill(v, b"map-")
            await _until_stalled(v, b"map-fwd-")
            assert "LMDB map is full" in v.disk.stalled and "MEDCHAIN_LMDB_MAP_GB" in v.disk.stalled
            with pytest.raises(StorageFull, match="LMDB map is full"):
                await v.submit_many(_txs(v.chain_id, b"late-", 1))
            head, delivered = v.ledger.head().height, v.replica.last_delivered
            await asyncio.sleep(1.5)  # stalled: nothing reaches the replica, nothing is delivered or written
            assert (v.ledger.head().height, v.replica.last_delivered) == (head, delivered)
            assert len(v.mempool) > 0  # what the failed block held is still pending, not lost
            # another stage's step (a checkpoint install) is not run, and its caller is told, not left
            # waiting: it waited for its own timeout (300 s) before
            ran: list[int] = []

            async def step() -> None:
                ran.append(1)
            with pytest.raises(StorageFull, match="storage stalled"):
                await asyncio.wait_for(v.in_consensus(step), 10)
            assert ran == []
            return head
        finally:
            await v.stop()

    with caplog.at_level("CRITICAL", logger="medchain.storage"):
        head = asyncio.run(full())
    assert any("STORAGE FULL" in r.getMessage() and "LMDB map is full" in r.getMessage() for r in caplog.records)
    rep = verify_ledger(home / "ledger", Genesis.load(home / "genesis.json"))
    assert rep.ok and rep.height == head, rep.errors

    monkeypatch.setenv("MEDCHAIN_LMDB_MAP_GB", "1")  # what the log tells the operator to do

    async def restarted() -> None:
        v = Validator(home)
        await v.start()
        try:
            assert v.disk.stalled is None and v.disk.low is None
            res = await v.submit_many(_txs(v.chain_id, b"after-", 50))
            assert all(isinstance(r, bytes) for r in res)
            await _until(lambda: all(v.ledger.tx_location(r) for r in res), 30, "commits after the restart")
            assert v.ledger.head().height > head
        finally:
            await v.stop()

    asyncio.run(restarted())


def _mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", "") or exc
        pytest.skip(f"a size-limited tmpfs cannot be mounted here (needs root or CAP_SYS_ADMIN): {err}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def ballast(dir_: Path, leave_free: int) -> Path:
    """A file filling the filesystem at `dir_` until `leave_free` bytes are left."""
    st = os.statvfs(dir_)
    path = dir_ / "ballast"
    size = st.f_bavail * st.f_frsize - leave_free
    with open(path, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            fh.write(chunk[:size])
            size -= len(chunk)
    return path


@pytest.mark.parametrize("writemap", ["0", "1"])  # written through write(2), or in place (node/mapfile.py)
def test_a_full_filesystem_stops_consensus_and_freeing_space_resumes_it_without_a_restart(tmp_path, monkeypatch,
                                                                                         caplog, writemap) -> None:
    monkeypatch.setenv("MEDCHAIN_DISK_RESERVE_MB", "1")
    monkeypatch.setenv("MEDCHAIN_LMDB_WRITEMAP", writemap)
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, 24)
    try:
        home = _home(mnt)
        weight = ballast(mnt, 4 << 20)

        async def go() -> None:
            v = Validator(home)
            await v.start()
            try:
                admitted = await _fill(v, b"fs-")
                await _until_stalled(v, b"fs-fwd-")
                assert "filesystem holding the" in v.disk.stalled and str(mnt) in v.disk.stalled
                stalled_at, delivered = v.ledger.head().height, v.replica.last_delivered
                await asyncio.sleep(1.5)
                assert (v.ledger.head().height, v.replica.last_delivered) == (stalled_at, delivered)
                weight.unlink()  # the operator frees space
                await _until(lambda: v.disk.stalled is None and len(v.mempool) == 0, 60,
                             "the validator to resume and commit what was pending")
                assert v.ledger.head().height > stalled_at and v.disk.resumed == 1
                res = await v.submit_many(_txs(v.chain_id, b"again-", 20))  # and it serves again
                assert all(isinstance(r, bytes) for r in res), res
                await _until(lambda: all(v.ledger.tx_location(r) for r in res), 30, "new commits")
                assert admitted > 0
            finally:
                await v.stop()

        with caplog.at_level("WARNING", logger="medchain.storage"):
            asyncio.run(go())
        msgs = [r.getMessage() for r in caplog.records]
        assert any("STORAGE FULL" in m and str(mnt) in m for m in msgs), msgs
        assert any("consensus resumed from height" in m for m in msgs), msgs
        rep = verify_ledger(home / "ledger", Genesis.load(home / "genesis.json"))
        assert rep.ok, rep.errors
    finally:
        _umount(mnt)


def test_a_block_whose_ledger_write_failed_is_not_pinned_twice_when_it_commits_again(tmp_path) -> None:
    from node.ipfs.blockstore import BlockStore
    from node.ipfs.cid import cid_v1_raw

    store = BlockStore(tmp_path / "blobs")
    a, b = b"first blob", b"second blob"
    ca, cb = cid_v1_raw(a), cid_v1_raw(b)
    store.commit_blobs([(ca, a)], [ca], height=5)
    store.commit_blobs([(ca, a)], [ca], height=5)  # block 5 again: its ledger write had failed
    assert store.pin_count(ca) == 1
    store.commit_blobs([(cb, b)], [ca, cb], height=6)  # the next block pins as usual
    assert (store.pin_count(ca), store.pin_count(cb)) == (2, 1)
    store.close()


def test_another_block_at_a_height_whose_pins_were_counted_pins_its_own(tmp_path) -> None:
    """A single validator killed between the block store's commit and the ledger's may commit another
    block at that height (no certificate fixes it): its blobs are pinned, so the collector and
    `ipfs gc` keep them (before, the height alone said "counted" and they went). The lost block's
    pins stay: blobs kept, never deleted too soon. The same block again is still counted once."""
    from node.ipfs.blockstore import BlockStore
    from node.ipfs.cid import cid_v1_raw

    store = BlockStore(tmp_path / "blobs")
    a, b = b"in the block that was lost", b"in the block that committed"
    ca, cb = cid_v1_raw(a), cid_v1_raw(b)
    store.commit_blobs([(ca, a)], [ca], height=5, block_hash=b"\x01" * 32)
    store.commit_blobs([(cb, b)], [cb], height=5, block_hash=b"\x02" * 32)
    store.commit_blobs([(cb, b)], [cb], height=5, block_hash=b"\x02" * 32)  # its ledger write failed: again
    assert (store.pin_count(ca), store.pin_count(cb)) == (1, 1)
    store.commit_blobs([(ca, a)], [ca], height=4, block_hash=b"\x03" * 32)  # below: counted before
    assert store.pin_count(ca) == 1
    assert store.gc(grace=0.0, now=time.time() + 1) == 0 and store.has_blob(cb)
    store.close()


@pytest.mark.parametrize("writemap", ["0", "1"])
def test_a_block_store_on_a_full_filesystem_refuses_the_commit_whole(tmp_path, monkeypatch, writemap) -> None:
    """Sidecars until the filesystem is full: the failing commit is a storage error, and none of its
    blobs is listed or pinned; the store reopens with every earlier commit whole."""
    from node.ipfs.blockstore import BlockStore
    from node.ipfs.cid import cid_v1_raw

    monkeypatch.setenv("MEDCHAIN_LMDB_WRITEMAP", writemap)
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, 4)
    try:
        store = BlockStore(mnt / "blobs")
        done: list = []
        failed = None
        for height in range(1, 200):
            blobs = [os.urandom(64 * 1024) for _ in range(4)]
            cids = [cid_v1_raw(x) for x in blobs]
            try:
                store.commit_blobs(list(zip(cids, blobs, strict=True)), cids, height)
            except Exception as exc:  # noqa: BLE001 - what a full filesystem raises is the point
                failed = (exc, cids)
                break
            done.append(cids)
        assert failed is not None and is_storage_error(failed[0]), failed
        assert done
        store.close()
        store = BlockStore(mnt / "blobs")
        assert all(store.has_blob(c) and store.pin_count(c) == 1 for cids in done for c in cids)
        assert not any(store.has_blob(c) or store.pin_count(c) for c in failed[1])
        store.close()
    finally:
        _umount(mnt)


def test_a_write_that_fails_again_right_after_a_resume_backs_off(tmp_path, monkeypatch) -> None:
    """A write error that free space does not cure (a failing disk's EIO) must not spin: each failure
    soon after a resume doubles the wait before the next try, up to a minute."""
    from node import storage

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    guard = storage.DiskGuard([storage.Store("ledger", tmp_path / "db", env)], reserve=0)
    clock = [1000.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    eio = lmdb.Error("mdb_txn_commit: Input/output error")
    waits = []
    for _ in range(8):
        guard.failed("committing", eio)
        assert guard.stalled and not guard.can_resume()
        with pytest.raises(StorageFull):
            guard.check()
        waits.append(guard.backoff)
        clock[0] += guard.backoff
        assert guard.can_resume()
        guard.stalled = None  # what the consensus task does when it resumes
        guard.mark_resumed()
        clock[0] += 1.0  # and the next write fails a second later
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    clock[0] += storage.BACKOFF_MAX_S + 1  # a failure long after the last resume starts over
    guard.failed("committing", eio)
    assert guard.backoff == storage.BACKOFF_S
    env.close()


def test_an_lmdb_panic_stalls_until_a_restart(tmp_path, monkeypatch) -> None:
    """After MDB_PANIC (a failed meta-page write) every call on that environment fails: free space
    cannot cure it, so the validator stays stalled and says to restart."""
    from node import storage

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    guard = storage.DiskGuard([storage.Store("ledger", tmp_path / "db", env)], reserve=0)
    guard.failed("committing", lmdb.PanicError("mdb_txn_begin: MDB_PANIC: Update of meta page failed"))
    monkeypatch.setattr(storage.time, "monotonic", lambda: 1e12)  # long after any backoff
    assert not guard.can_resume() and "restart this validator" in guard.stalled
    with pytest.raises(StorageFull, match="MDB_PANIC"):
        guard.check()
    env.close()


def test_work_is_refused_below_the_reserve_and_taken_again_only_a_margin_above_it(tmp_path, monkeypatch,
                                                                                   caplog) -> None:
    """Free space hovering at the reserve must not flip the validator between refusing and accepting
    (and logging each flip) every half second."""
    from node import storage

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 30)
    free = [100 * storage.MIB]
    monkeypatch.setattr(storage.Store, "free", lambda self: free[0])
    guard = storage.DiskGuard([storage.Store("ledger", tmp_path / "db", env)], reserve=64 * storage.MIB)
    assert guard.low is None and guard.margin == 16 * storage.MIB
    with caplog.at_level("WARNING", logger="medchain.storage"):
        for mib, refused in ((63, True), (65, True), (70, True), (79, True), (80, False), (70, False), (63, True)):
            free[0] = mib * storage.MIB
            guard.refresh()
            assert (guard.low is not None) is refused, (mib, guard.low)
    assert sum("DISK FULL" in r.getMessage() for r in caplog.records) == 2
    assert sum("back above the reserve" in r.getMessage() for r in caplog.records) == 1
    env.close()
