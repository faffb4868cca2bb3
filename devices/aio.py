"""The event loop the emulated clients (phones, load generators, the demo) run on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop, as the validators do: about half the CPU per HTTP request of asyncio's
    own loop, and the clients share the machine with the validators they measure."""
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; an unusual platform still runs
        return asyncio.run(coro)
    return uvloop.run(coro)
