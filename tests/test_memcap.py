"""The benchmark's memory cap (devices/load/memcap.py, `medchain bench --memory-mb`): a real cgroup
and real processes; skipped with the reason where no memory cgroup can be made (not root)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from devices.load.memcap import CapError, MemoryCap


def _cap(limit_mb: float, name: str) -> MemoryCap:
    try:
        return MemoryCap(limit_mb, name)
    except CapError as exc:
        pytest.skip(str(exc))


def test_a_process_moved_in_is_charged_and_released_when_the_cap_closes() -> None:
    cap = _cap(256, "medchain-test-memcap-a")
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(20 << 20); time.sleep(30)"])
    try:
        cap.add(child.pid)
        assert cap.pids() == [child.pid]
        assert cap.usage()["limit_mb"] == 256
    finally:
        cap.close()
        child.kill()
        child.wait()
    assert not cap.path.exists()


def test_a_process_that_outgrows_the_cap_is_held_to_it() -> None:
    """200 MiB touched page by page in a 48 MiB cap: the limit is hit and the charge never passes it
    (the kernel reclaims, swaps or OOM-kills; which one depends on the machine's swap)."""
    cap = _cap(48, "medchain-test-memcap-b")
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.readline(); "
                              "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); print('done')"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        cap.add(child.pid)
        out, _ = child.communicate("go\n", timeout=120)
        use = cap.usage()
        assert use["limit_hits"] > 0, use
        assert 0 < use["peak_mb"] <= 48.5, use
        assert child.returncode == -signal.SIGKILL or out.strip() == "done", (child.returncode, out)
    finally:
        if child.poll() is None:
            child.kill()
        cap.close()
