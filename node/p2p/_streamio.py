"""Buffered reads on a py-libp2p stream (trio side): exact lengths and unsigned varints.

py-libp2p's ``stream.read(n)`` returns whatever the muxer has buffered (up to n bytes) and raises
``StreamEOF`` at the end; length-prefixed protocols need "exactly n bytes or a clear error".
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from libp2p.network.stream.exceptions import StreamEOF

READ_CHUNK = 256 * 1024


class StreamSlots:
    """Inbound streams open per (peer, kind), each at most `limit`: every open stream may hold a
    partial frame (up to a whole frame's bytes) or a reply, and py-libp2p bounds neither the streams
    a peer opens nor, in yamux, what it sends past the window. Over the limit a stream is reset."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.open: dict[tuple[str, str], int] = {}
        self.stats = stats

    @contextlib.contextmanager
    def take(self, peer: str, kind: str, limit: int) -> Iterator[bool]:
        key = (peer, kind)
        n = self.open.get(key, 0)
        if n >= limit:
            self.stats["streams_refused"] = self.stats.get("streams_refused", 0) + 1
            yield False
            return
        self.open[key] = n + 1
        try:
            yield True
        finally:
            left = self.open[key] - 1
            if left:
                self.open[key] = left
            else:
                del self.open[key]

    async def serve(self, stream: Any, peer: str, kind: str, limit: int, run: Callable[[], Awaitable[None]]) -> None:
        """`run()` holding one of the peer's `limit` slots of `kind`; over the limit the stream is reset."""
        with self.take(peer, kind, limit) as ok:
            if ok:
                await run()
                return
        with contextlib.suppress(Exception):
            await stream.reset()


class StreamClosedEarly(Exception):
    """The peer closed the stream before a complete message arrived."""


class StreamReader:
    __slots__ = ("buf", "stream")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, want: int) -> bool:
        """Read at least one more chunk; False on a clean end of stream."""
        try:
            chunk = await self.stream.read(max(READ_CHUNK, min(want, 4 * READ_CHUNK)))
        except StreamEOF:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill(n - len(self.buf)):
                raise StreamClosedEarly(f"stream ended after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def uvarint(self) -> int | None:
        """An unsigned LEB128 varint (at most 9 bytes, as multiformats allow); None on a clean
        end of stream before its first byte."""
        value = shift = i = 0
        while True:
            if i >= len(self.buf) and not await self._fill(1):
                if i == 0:
                    return None
                raise StreamClosedEarly("stream ended inside a varint")
            b = self.buf[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                del self.buf[:i]
                return value
            shift += 7
            if i >= 9:
                raise ValueError("varint longer than 9 bytes")
