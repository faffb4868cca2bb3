"""Settings the p2p adapter gives py-libp2p, checked where py-libp2p reads them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import node.p2p._trio_side; "
         "from libp2p.stream_muxer.yamux.yamux import _yamux_release_on_read as f; print(f())")


@pytest.mark.parametrize(("env", "expected"), [(None, "False"), ("1", "True"), ("0", "False")])
def test_yamux_window_updates_are_not_sent_per_read_unless_the_operator_asks(env: str | None, expected: str) -> None:
    """py-libp2p's yamux answers every read with a WINDOW_UPDATE frame by default (one more noise
    message per message received); the adapter turns that off, and an operator's own setting wins."""
    child = {k: v for k, v in os.environ.items() if k != "PY_YAMUX_RELEASE_ON_READ"}
    if env is not None:
        child["PY_YAMUX_RELEASE_ON_READ"] = env
    out = subprocess.run([sys.executable, "-c", PROBE], env=child, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == expected
