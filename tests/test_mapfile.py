"""The stores' LMDB environments written in place (node/mapfile.py): real LMDB files, and a
size-limited tmpfs for the full disk, where a write into an unallocated page would be a SIGBUS
that kills the process. Each filling run is a child process, so a SIGBUS shows as its exit."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import cid_v1_raw
from node.ledger.store import Ledger
from node.mapfile import GRAIN, MapFile
from node.storage import Store
from tests.test_storage import _mount_tmpfs, _umount

ROOT = Path(__file__).resolve().parents[1]

# Fills a store on the filesystem at argv[1] with blocks' sidecars until a write fails; prints the
# error and how many commits held. `argv[2] == "unguarded"` skips the allocation ahead (the mutant).
FILL = textwrap.dedent("""
    import os, sys
    from node.ipfs.blockstore import BlockStore
    from node.ipfs.cid import cid_v1_raw
    from node import mapfile
    if sys.argv[2] == "unguarded":
        mapfile.MapFile._reserve = lambda self, need: None
    store = BlockStore(sys.argv[1] + "/blobs", map_size=1 << 30)
    for height in range(1, 10_000):
        blobs = [os.urandom(32 * 1024) for _ in range(4)]
        cids = [cid_v1_raw(b) for b in blobs]
        try:
            store.commit_blobs(list(zip(cids, blobs)), cids, height)
        except Exception as exc:
            print("FAILED", type(exc).__name__, getattr(exc, "errno", None), exc.filename if isinstance(exc, OSError) else "")
            print("HELD", height - 1)
            break
    store.close()
    store = BlockStore(sys.argv[1] + "/blobs", map_size=1 << 30)  # reopens with every earlier commit whole
    print("PINNED", store.pin_count(cids[0]), "COUNT", store.count())
""")


def _fill(where: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FILL, str(where), mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MEDCHAIN_LMDB_WRITEMAP": "1"})


def test_a_full_filesystem_fails_the_write_cleanly_instead_of_killing_the_process(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, 6)
    try:
        run = _fill(mnt, "guarded")
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
        lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
        name, code, filename = lines["FAILED"].split(" ", 2)
        assert (name, int(code)) == ("OSError", errno.ENOSPC), lines  # the guard's error, before LMDB wrote
        assert filename.endswith("blobs/data.mdb"), filename  # naming the store, for the storage-full report
        assert int(lines["HELD"]) > 10
        pinned, count = lines["PINNED"].split(" COUNT ")
        assert (int(pinned), int(count)) == (0, 4 * int(lines["HELD"]))  # the failed commit left nothing
    finally:
        _umount(mnt)


def test_without_the_allocation_ahead_the_same_fill_is_a_sigbus(tmp_path: Path) -> None:
    """Why the guard exists: the same writes with it disabled die of SIGBUS mid-transaction."""
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, 6)
    try:
        run = _fill(mnt, "unguarded")
        assert run.returncode == -signal.SIGBUS, (run.returncode, run.stdout, run.stderr[-2000:])
    finally:
        _umount(mnt)


def test_the_file_is_allocated_ahead_and_the_storage_counts_that_as_free(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_LMDB_WRITEMAP", "1")
    store = BlockStore(tmp_path / "blobs")
    try:
        data = os.urandom(100_000)
        store.commit_blobs([(cid_v1_raw(data), data)], [cid_v1_raw(data)], height=1)
        assert store.spare() >= GRAIN // 2  # room for the next transactions is held, not re-asked each time
        st = os.stat(tmp_path / "blobs" / "data.mdb")
        assert st.st_blocks * 512 < st.st_size  # sparse: the map's size, only what was written or held
        bare = Store("block store", tmp_path / "blobs", store.env)
        held = Store("block store", tmp_path / "blobs", store.env, store.spare)
        assert 0 < held.free() - bare.free() <= store.spare() + (1 << 20)
    finally:
        store.close()


def test_writemap_is_off_unless_asked_for_and_a_bad_value_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MEDCHAIN_LMDB_WRITEMAP", raising=False)
    led = Ledger(tmp_path / "ledger", genesis_root=bytes(32))
    try:
        assert led.env.flags()["writemap"] is False and led.spare() == 0
        st = os.stat(tmp_path / "ledger" / "data.mdb")
        assert st.st_size < 1 << 20  # not sized to the map
    finally:
        led.close()
    monkeypatch.setenv("MEDCHAIN_LMDB_WRITEMAP", "yes")
    with pytest.raises(SystemExit, match="MEDCHAIN_LMDB_WRITEMAP"):
        MapFile(tmp_path / "other", 1 << 24, 2)
    monkeypatch.setenv("MEDCHAIN_LMDB_WRITEMAP", "1")
    led = Ledger(tmp_path / "ledger", genesis_root=bytes(32))  # the same ledger, now written in place
    try:
        assert led.env.flags()["writemap"] is True and led.head().height == 0
    finally:
        led.close()
