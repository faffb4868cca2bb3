"""The per-transaction floor every throughput benchmark prints (devices/load/floor.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from devices.load.floor import _DEFAULT, floor_line, measure_floor


@pytest.mark.skipif(not _DEFAULT.exists(), reason="../shared/bench/floor.py is not beside this checkout")
def test_the_floor_is_measured_and_leaves_no_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the script makes an LMDB in a mkdtemp() directory and never removes it: run with our TMPDIR
    # pointing here, nothing may be left in it
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR in this process too
    try:
        us = measure_floor(2000)
    finally:
        tempfile.tempdir = None
    assert us is not None and 1 < us < 10_000
    assert os.listdir(tmp_path) == []
    assert floor_line(us) == f"floor: {us:.1f} us CPU per tx per validator (../shared/bench/floor.py, this run)"


def test_without_the_script_the_floor_is_not_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDCHAIN_FLOOR_SCRIPT", str(tmp_path / "absent.py"))
    assert measure_floor() is None
    assert floor_line(None) == "floor: not measured (../shared/bench/floor.py not found)"
