"""Cython hot loops: batched ECDSA verification and signing, batched AES-GCM, the state tree's per-block
update, and the wire decoder's fast path. Each has a pure-Python fallback (MEDCHAIN_NO_NATIVE=1 forces it)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def forced_off() -> bool:
    """Whether MEDCHAIN_NO_NATIVE asks for the pure-Python paths (any value but empty or 0)."""
    return os.environ.get("MEDCHAIN_NO_NATIVE", "").strip() not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The extension module `native.<name>`, or None if it is not built or forced off."""
    if forced_off():
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None
