"""Hostile clients for tests and benchmarks (issue 16), against a validator on 127.0.0.1 only.

Each attacker binds its own loopback address (127.0.0.x), so the validator sees it as its own
client IP. Every attack is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp

from devices.load.benchmeter import proc_status_mb
from node.crypto.keys import Identity
from node.tx import Profile, Tx
from node.wire import encode

MSGPACK = {"Content-Type": "application/msgpack"}
MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    """Resident set size of a process now, from /proc (MiB)."""
    return proc_status_mb(pid, "VmRSS")


def session(ip: str | None = None, limit: int = 100) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(local_addr=(ip, 0) if ip else None, limit=limit)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))


def sybil_batches(chain: str, tag: bytes, batches: int, size: int) -> list[bytes]:
    """`batches` msgpack batches of `size` profile transactions, each from a fresh key."""
    return [encode([Tx.build(Identity.from_seed(b"%s-%d-%d" % (tag, b, i)), chain, 1,
                             Profile("s", "x", "y", bytes(32))).raw for i in range(size)])
            for b in range(batches)]


async def post_batches(url: str, ip: str, bodies: list[bytes], seconds: float) -> Counter:
    """Post the batches back to back from `ip` (each once) until done or `seconds` pass; counts
    per-transaction results (202, 409, 429 ...) and whole-batch refusals ("batch 429")."""
    got: Counter = Counter()
    deadline = time.monotonic() + seconds
    async with session(ip) as s:
        for body in bodies:
            if time.monotonic() >= deadline:
                break
            async with s.post(url + "/v1/txs", data=body, headers=MSGPACK) as r:
                if r.status != 200:
                    got[f"batch {r.status}"] += 1
                    continue
                for x in (await r.json())["results"]:
                    got[x["status"]] += 1
    return got


async def stalled_upload(ip: str, port: int, hold_s: float, send: int = 2 * MIB - 1) -> str:
    """Declare a 2 MiB body, send `send` bytes of it (one short by default, or none) and stall: the
    status the validator answers ("held" if nothing within `hold_s`, "closed"/"reset" if it hung up
    without one)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    except OSError as exc:
        return f"connect: {exc.errno}"
    try:
        writer.write(b"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % (2 * MIB))
        body = os.urandom(send)
        for i in range(0, len(body), 256 * 1024):
            writer.write(body[i:i + 256 * 1024])
            await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), hold_s)
        except TimeoutError:
            return "held"
        return line.split(b" ")[1].decode() if line else "closed"
    except OSError:
        return "reset"
    finally:
        writer.close()


async def slow_headers(ip: str, port: int, hold_s: float) -> tuple[str, float]:
    """Open a connection and trickle an unfinished request head (a byte every 0.5 s): how it ended
    ("refused" with a 503, "closed", or "held" for all of `hold_s`) and after how many seconds."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    except OSError:
        return "connect", 0.0
    try:
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() < t0 + hold_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.5)
            except TimeoutError:
                writer.write(b"X")
                continue
            return ("refused" if data.startswith(b"HTTP/1.1 503") else "closed"), time.monotonic() - t0
        return "held", time.monotonic() - t0
    except OSError:
        return "closed", time.monotonic() - t0
    finally:
        writer.close()


async def repeat(make: Callable[[], Awaitable[str | tuple[str, float]]], seconds: float, width: int,
                 max_total: int) -> Counter:
    """Keep `width` copies of the attack coroutine `make()` running until `seconds` pass or
    `max_total` were started; counts their outcomes."""
    got: Counter = Counter()
    deadline = time.monotonic() + seconds
    started = 0

    async def lane() -> None:
        nonlocal started
        while time.monotonic() < deadline and started < max_total:
            started += 1
            res = await make()
            got[res[0] if isinstance(res, tuple) else res] += 1

    await asyncio.gather(*(lane() for _ in range(width)))
    return got
