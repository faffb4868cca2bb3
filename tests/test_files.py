"""node/files.py: whole-file replacement, synced through the directory."""

from __future__ import annotations

import os
from pathlib import Path

from node.files import write_durably


def test_a_file_is_replaced_whole_with_its_mode_and_no_temp_file_left(tmp_path: Path) -> None:
    p = tmp_path / "key.json"
    write_durably(p, "first", 0o600)
    leftover = tmp_path / "key.json.tmp"
    leftover.write_text("a crash left this, world-readable")
    os.chmod(leftover, 0o666)
    write_durably(p, b"second" * 100_000, 0o600)
    assert p.read_bytes() == b"second" * 100_000
    assert p.stat().st_mode & 0o777 == 0o600  # the leftover's mode did not carry over
    assert sorted(x.name for x in tmp_path.iterdir()) == ["key.json"]
