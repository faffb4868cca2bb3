"""A memory cap for benchmarked validators, as an edge host's RAM would be: a cgroup (v2, or v1's
memory controller) that charges their anonymous memory and the page cache of the files they use,
so a validator whose working set outgrows it is squeezed (page faults, then the OOM killer) instead
of reported under a resident-set figure that leaves the page cache out.

Needs root (or a delegated cgroup); CapError says why not.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


class CapError(RuntimeError):
    """No memory cgroup can be made here."""


class MemoryCap:
    def __init__(self, limit_mb: float, name: str | None = None, root: Path = ROOT) -> None:
        self.limit = int(limit_mb * MIB)
        name = name or f"medchain-bench-{os.getpid()}"
        if "memory" in _read(root / "cgroup.controllers").split():  # v2: the unified hierarchy
            if "memory" not in _read(root / "cgroup.subtree_control").split():
                raise CapError(f"cgroup v2 at {root}: the memory controller is not enabled for children "
                               f"(echo +memory > {root}/cgroup.subtree_control)")
            self.v2, self.path = True, root / name
        elif (root / "memory" / "memory.limit_in_bytes").exists():
            self.v2, self.path = False, root / "memory" / name
        else:
            raise CapError(f"no memory cgroup controller under {root}")
        try:
            self.path.mkdir(exist_ok=True)
            self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(self.limit))
        except OSError as exc:
            raise CapError(f"cannot make the memory cgroup {self.path} (needs root): {exc}") from None

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the cap; what it holds from now on is charged here."""
        self._write("cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return [int(x) for x in _read(self.path / "cgroup.procs").split()]

    def usage(self) -> dict[str, float | int]:
        """Memory charged now and at the peak (MiB), and how often the cap was hit (v1: allocations
        refused at the limit; v2: `max` events) and processes OOM-killed (v2 only: -1 on v1)."""
        if self.v2:
            ev = dict(line.split() for line in _read(self.path / "memory.events").splitlines())
            peak = self.path / "memory.peak"  # Linux 5.19 and later
            return {"limit_mb": self.limit / MIB, "now_mb": _mib(self.path / "memory.current"),
                    "peak_mb": _mib(peak) if peak.exists() else -1.0, "limit_hits": int(ev.get("max", 0)),
                    "oom_kills": int(ev.get("oom_kill", 0))}
        return {"limit_mb": self.limit / MIB, "now_mb": _mib(self.path / "memory.usage_in_bytes"),
                "peak_mb": _mib(self.path / "memory.max_usage_in_bytes"),
                "limit_hits": int(_read(self.path / "memory.failcnt")), "oom_kills": -1}

    def close(self) -> None:
        """Move whatever still runs in it back to the parent, and remove the cgroup."""
        parent = self.path.parent / "cgroup.procs"
        for pid in self.pids():
            try:
                parent.write_text(str(pid))
            except OSError:  # it exited meanwhile
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _mib(path: Path) -> float:
    return round(int(_read(path) or 0) / MIB, 1)
