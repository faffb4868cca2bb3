"""The per-transaction floor (`../shared/bench/floor.py`, beside the repository): the CPU a
Python validator needs per transaction at least on this machine. Every throughput benchmark
prints it from the same run, so its figures read as ratios to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "bench" / "floor.py"


def measure_floor(n: int = 20000) -> float | None:
    """CPU microseconds per transaction, or None when the floor script is not at hand
    (MEDCHAIN_FLOOR_SCRIPT overrides where it is looked for)."""
    script = Path(os.environ.get("MEDCHAIN_FLOOR_SCRIPT", _DEFAULT))
    if not script.exists():
        return None
    # the script opens its LMDB in a mkdtemp() directory it leaves behind (12 MB a run): give it a
    # temporary directory of ours, removed afterwards
    with tempfile.TemporaryDirectory(prefix="medchain-floor-") as tmp:
        out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TMPDIR": tmp})
    m = re.search(r"floor: ([0-9.]+) us", out.stdout)
    return float(m.group(1)) if m else None


def floor_line(us: float | None) -> str:
    return (f"floor: {us:.1f} us CPU per tx per validator (../shared/bench/floor.py, this run)" if us is not None
            else "floor: not measured (../shared/bench/floor.py not found)")
