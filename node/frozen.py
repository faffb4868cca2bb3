"""Frozen dataclasses made from fields already checked, without their __init__.

A frozen dataclass's __init__ sets each field with object.__setattr__ (1.5 us for a six-field write,
0.5 this way). Parsers on the hot path (every validator parses every transaction and its CID) use
this once they have checked every field themselves. A __post_init__ is skipped too: use it on such a
class only where the caller has made its checks hold (a CID parsed by its prefix).
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def frozen_from(cls: type[T], fields: dict[str, Any]) -> T:
    """An instance of `cls` holding `fields` (every dataclass field, and any cached_property value)."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj
