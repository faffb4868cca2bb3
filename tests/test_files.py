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


def test_a_symlink_planted_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    """In a shared directory another user could plant `X.tmp` as a symlink to a file of the writer's
    (a review: `medchain snapshot --out /tmp/...` as root); the write replaces the link, and the file
    it pointed to is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.json.tmp").symlink_to(victim)
    write_durably(tmp_path / "out.json", "new content")
    assert victim.read_text() == "precious" and (tmp_path / "out.json").read_text() == "new content"
    assert not (tmp_path / "out.json").is_symlink()
