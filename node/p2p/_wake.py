"""Handing queued frames from the asyncio side to a trio pump without lost wake-ups.

The producer appends to a deque and then calls wake(); the pump calls wait_for_items(). The pump
raises `waiting` before its last look at the queue, so an append that lands in between is seen
either by that look or by wake() setting the event."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio


def wake(holder: Any) -> None:
    """Producer side (on the trio thread): wake the pump if it sleeps."""
    if holder.waiting:
        holder.event.set()


async def wait_for_items(holder: Any, q: deque) -> None:
    """Pump side: return once `q` is non-empty; `holder` has `waiting` and a trio `event`."""
    while not q:
        holder.waiting = True
        if q:
            holder.waiting = False
            return
        await holder.event.wait()
        holder.event = trio.Event()
        holder.waiting = False
