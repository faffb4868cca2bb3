"""Files replaced whole and durably: written beside their name, synced, renamed over it, and the
rename synced through the directory, so that after a crash or a power cut the path holds either
the old content or the new, never an empty or partial file, nor the old one after a reported save."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory `path` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Rename the synced file `tmp` over `path` and sync the directory."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def create_fresh(tmp: Path, mode: int) -> int:
    """A new file at `tmp` for writing, never one found there: a leftover is removed first, and a
    symlink planted at that name (in a shared directory, say /tmp) is neither followed nor written
    through (O_EXCL | O_NOFOLLOW: created anew or refused)."""
    tmp.unlink(missing_ok=True)  # a symlink itself, not what it points to
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_durably(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` (created with `mode`, never left wider by a leftover temp file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = create_fresh(tmp, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    replace_durably(tmp, path)


class HomeBusy(ValueError):
    """Another process holds the home (a running validator, or a restore into it)."""


def hold_home(home: str | os.PathLike[str]) -> int:
    """An exclusive lock on a validator home, held until the returned descriptor is closed (or the
    process exits): a validator holds it while it runs, and a restore takes it, so a restore into the
    home of a running validator is refused instead of replacing its ledger under it (a review: the
    running replica never saw the new head and committed nothing more). The lock is on the home
    directory itself: a lock file created by root (`sudo medchain operator install-genesis`) was one
    the validator's own user could not open (a review)."""
    fd = os.open(Path(home), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HomeBusy(f"{home} is in use by another process (a running validator?): stop it first") from None
    return fd
