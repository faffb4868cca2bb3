"""The fuzzers in `make test`: every saved crash replays as a regression test, and each atheris
target runs briefly (FUZZ_SECONDS, default 3 s each; `make fuzz` runs them long)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import NAMES, REGRESSIONS
from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("FUZZ_SECONDS", "3"))
CASES = sorted((d.name, f) for d in REGRESSIONS.iterdir() if d.is_dir() for f in sorted(d.iterdir()))


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_regression(target: str, path: Path, request: pytest.FixtureRequest) -> None:
    """A crash the fuzzer found once, replayed through the same target."""
    data = path.read_bytes()
    if target == "http":
        request.getfixturevalue("http").request(data)
    else:
        TARGETS[target](data)


@pytest.fixture(scope="module")
def http():  # the HTTP harness, started once for every http regression
    from tests.fuzz.http_target import HttpHarness
    h = HttpHarness()
    yield h
    h.close()


@pytest.mark.parametrize("target", NAMES)
def test_atheris_briefly(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    p = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, f"-max_total_time={SECONDS}", "-timeout=20",
         f"-artifact_prefix={tmp_path}/", *(["-dict=tests/fuzz/http.dict"] if target == "http" else [])],
        # TMPDIR: libFuzzer ends the process with exit(), which runs no Python finalizer, so the
        # harness's temporary validator home and corpus would outlive the run in the system temp dir
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120, env={**os.environ, "TMPDIR": str(tmp_path)})
    crashes = list(tmp_path.glob("crash-*"))
    assert p.returncode == 0 and not crashes, f"{target}: {crashes}\n{p.stderr[-3000:]}"
    assert "Done" in p.stderr
