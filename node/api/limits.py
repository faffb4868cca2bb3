"""The API's defences against hostile clients, in one place: transactions charged per client,
request bodies bounded in bytes and time (per client and overall), idle and unfinished connections
timed out, and open connections capped per client. A client is an IPv4 address or an IPv6 /64
(client_key). Parameters come from genesis.

The server wires it in with `Limits.middleware` (every route), `read_body` (every body-reading
route), `charge_txs` (the transaction routes) and `serve_kwargs` / `cap_connections` (the runner).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import ipaddress
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from node.genesis import Params
from node.mempool import KeyedLimiter, origin

log = logging.getLogger("medchain.api")
LINGER_S = 2.0  # after an early refusal, read and drop the rest of a body this long, then close
# bodies up to this size (single transactions, a phone's window of readings) pass the overall budget
# (not the client's): a flood of large uploads from many IPs cannot lock out the small requests
SMALL_BODY = 64 * 1024
TRIM_AFTER = 16 * 1024 * 1024  # give freed heap pages back to the OS after this many body bytes
_RESERVED = web.RequestKey("medchain.body_reserved", int)  # body bytes this request holds in the budget

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


BAD_SIG_COST = 8  # transaction tokens a transaction with a bad signature costs (a good one: 1)


def retry_after(seconds: float) -> str:
    """HTTP Retry-After is whole seconds; never 0, so a client does not retry in a busy loop."""
    return str(max(1, math.ceil(seconds)))


def _json_error(cls: type[web.HTTPException], reason: str, wait: float | None = None) -> web.HTTPException:
    return cls(text=f'{{"error": "{reason}"}}', content_type="application/json",
               headers={"Retry-After": retry_after(wait)} if wait else None)


def _too_large(what: str, limit: int, actual: int, detail: str) -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=actual, content_type="application/json",
                                         text=f'{{"error": "{what} too large: {detail}"}}')


def client_ip(req: web.Request) -> str:
    """The key every per-client limit of the API counts under (see client_key)."""
    return client_key(req.remote)


@functools.lru_cache(maxsize=4096)
def client_key(addr: str | None) -> str:
    """An IPv4 address is one client; an IPv6 client is its /64, the least a host or subscriber is
    given (one host owns 2^64 addresses: keyed by address it would be 2^64 clients); an IPv4-mapped
    IPv6 address (a dual-stack socket's) is its IPv4 address."""
    if not addr:
        return "unknown"
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.IPv6Address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)).network_address}/64"


class Limits:
    """Per-client-IP transaction buckets and the in-flight request-body budget (per IP and overall)."""

    def __init__(self, p: Params, throttled: Callable[[str], None], min_tx_burst: int,
                 origin_full: Callable[[str], bool] = lambda ip: False) -> None:
        # the burst never below the largest batch the API accepts, or such a batch could never pass
        self.txs = KeyedLimiter(p.client_tx_rate, max(p.client_tx_burst, min_tx_burst))
        self.tx_rate = p.client_tx_rate
        self.per_ip, self.total = p.client_body_bytes, p.server_body_bytes
        self.body_timeout = p.body_timeout_ms / 1000
        self.in_flight: Counter[str] = Counter()  # body bytes held per client IP
        self.in_flight_total = 0
        self.out_flight: Counter[str] = Counter()  # bytes of large answers being written, per client IP
        self.out_total = 0
        # a client IP may hold half of all: a phone proxy fetches blocks and blobs for its thousands of
        # phones from one address, and a starved one reads slowly (8 MiB, as for request bodies, sent
        # a benchmark's follower 429s at 2,000 writes/s)
        self.out_per_ip = max(self.per_ip, self.total // 2)
        self.throttled = throttled
        self.origin_full = origin_full  # the mempool holds this client's whole share
        self._freed = 0  # body bytes released since the heap was last trimmed
        self._trim: asyncio.TimerHandle | None = None

    @web.middleware
    async def middleware(self, req: web.Request, handler: Handler) -> web.StreamResponse:
        """Admission sees the client IP as the transactions' origin; the body bytes a request
        reserved are released when its handler is done with them (however it ends)."""
        ip = client_ip(req)
        try:
            with origin(ip):
                resp = await handler(req)
        finally:
            self._release(ip, req.get(_RESERVED, 0))
        return await self._send_large(req, ip, resp)

    async def _send_large(self, req: web.Request, ip: str, resp: web.StreamResponse) -> web.StreamResponse:
        """A large answer to a GET (a block, a blob) is written here, within the same budgets as request
        bodies, counted apart (per client IP, overall) and within the body timeout: a client that
        does not read left the whole body in the connection's write buffer for as long as it
        stayed open (1,024 connections of one IP x an 8 MiB block). A client's first large answer
        always goes; while it holds the budget, another gets 429 (the server's, 503)."""
        body = resp.body if type(resp) is web.Response else None
        # only a GET's answer may be refused here: a POST's (the per-item results of a batch) reports
        # what was already done, and a 429 in its place would make the client send it all again
        if not isinstance(body, bytes) or len(body) <= SMALL_BODY or req.method != "GET":
            return resp
        n = len(body)
        held = self.out_flight[ip]
        if held and held + n > self.out_per_ip:
            self.throttled("client_response")
            return web.json_response({"error": f"too many response bytes in flight to {ip} (limit {self.out_per_ip})"},
                                     status=429, headers={"Retry-After": "1"})
        if self.out_total and self.out_total + n > self.total:
            self.throttled("server_response")
            return web.json_response({"error": "too many response bytes in flight: try again later"},
                                     status=503, headers={"Retry-After": "1"})
        self.out_flight[ip] += n
        self.out_total += n
        try:
            async with asyncio.timeout(self.body_timeout):
                await resp.prepare(req)
                await resp.write_eof()  # returns once the body is down to the transport's low-water mark
        except TimeoutError:
            self.throttled("slow_reader")
            if req.transport is not None:
                req.transport.abort()  # the buffered body goes with the connection
        except ConnectionError:
            pass  # the client went away: nothing more to send
        finally:
            self.out_total -= n
            self.out_flight[ip] -= n
            if self.out_flight[ip] <= 0:
                del self.out_flight[ip]
        return resp

    def charge_txs(self, req: web.Request, n: int) -> web.Response | None:
        """Charge `n` transactions to the client IP's transaction bucket: None if allowed, else the
        429 to answer (the whole batch is refused, with the wait until it would fit, or at once if
        the client already holds its share of the mempool)."""
        ip = client_ip(req)
        if self.origin_full(ip):  # its new senders would be refused, after paying for their signatures
            self.throttled("client_share")
            return web.json_response({"error": f"rate limited: client {ip} holds its share of the mempool"},
                                     status=429, headers={"Retry-After": "1"})
        wait = self.txs.take(ip, time.monotonic(), n)
        if wait <= 0:
            return None
        self.throttled("client_tx")
        return web.json_response({"error": f"rate limited: client {ip} exceeds {self.tx_rate:g} "
                                           f"transactions/s ({n} in this request)"},
                                 status=429, headers={"Retry-After": retry_after(wait)})

    def penalise_bad_signatures(self, req: web.Request, n: int) -> None:
        """Transactions that failed their signature check cost BAD_SIG_COST tokens each in all: a
        client sending forgeries runs out of its transaction budget that many times sooner."""
        if n:
            self.txs.penalise(client_ip(req), time.monotonic(), n * (BAD_SIG_COST - 1))
            self.throttled("bad_signature")

    def _room(self, req: web.Request, ip: str, n: int) -> None:
        """429 (the client's budget) or 503 (the server's) unless `n` more body bytes fit."""
        if self.in_flight[ip] + n > self.per_ip:
            self.throttled("client_body")
            raise _json_error(web.HTTPTooManyRequests, f"too many request-body bytes in flight from "
                                                       f"{ip} (limit {self.per_ip})", 1.0)
        if self.in_flight_total + n > self.total and req.get(_RESERVED, 0) + n > SMALL_BODY:
            self.throttled("server_body")
            raise _json_error(web.HTTPServiceUnavailable, "too many request-body bytes in flight: "
                                                          "try again later", 1.0)

    def _reserve(self, req: web.Request, ip: str, n: int) -> None:
        self._room(req, ip, n)
        self.in_flight[ip] += n
        self.in_flight_total += n
        req[_RESERVED] = req.get(_RESERVED, 0) + n

    def _release(self, ip: str, n: int) -> None:
        if n:
            self.in_flight_total -= n
            self.in_flight[ip] -= n
            if self.in_flight[ip] <= 0:
                del self.in_flight[ip]
            self._freed += n
            if self._freed >= TRIM_AFTER and self._trim is None:
                # later, once the request's buffers are garbage; at most once a second
                self._trim = asyncio.get_running_loop().call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim, self._freed = None, 0
        trim_heap()

    async def read_body(self, req: web.Request, limit: int, what: str) -> bytes:
        """The request body, read in the chunks the connection delivers: refused with 413 once it
        exceeds `limit`, 429/503 when the bytes would exceed the client's or the server's in-flight
        budget (reserved as chunks arrive), 408 if it does not arrive within the body timeout. The
        reservation lasts until the handler returns.
        A declared length is checked against the budgets up front (a body that cannot fit is not
        read) but reserved only as its bytes arrive: reserved up front, connections that declared
        2 MiB and sent nothing held the whole server's budget for the body timeout, for free."""
        n = req.content_length
        if n is not None and n > limit:
            raise _too_large(what, limit, n, f"{n} bytes, limit {limit}")
        ip = client_ip(req)
        if n:
            self._room(req, ip, n)
        chunks: list[bytes] = []
        got = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while chunk := await req.content.readany():
                    got += len(chunk)
                    if got > limit:
                        raise _too_large(what, limit, got, f"limit {limit} bytes")
                    held = req.get(_RESERVED, 0)
                    if got > held:  # chunked, or more than declared
                        self._reserve(req, ip, got - held)
                    chunks.append(chunk)
            body = b"".join(chunks)
        except TimeoutError:
            self.throttled("slow_body")
            exc = _json_error(web.HTTPRequestTimeout, f"{what} not received within {self.body_timeout:g} s")
            exc.force_close()  # no keep-alive for a client this slow
            raise exc from None
        except ConnectionError:  # the client went away mid-body
            raise _json_error(web.HTTPBadRequest, f"incomplete {what}: connection lost") from None
        finally:
            chunks.clear()  # a refused body's frame can outlive it in a traceback cycle until a full GC
        return body


def serve_kwargs(p: Params) -> dict:
    """aiohttp server settings: its keep-alive timer also runs from the moment a connection opens
    and closes it while no complete request has arrived, so it bounds unfinished headers
    (slowloris) as well as idle keep-alive connections."""
    return {"keepalive_timeout": p.idle_timeout_ms / 1000, "lingering_time": LINGER_S}


_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: 46\r\n\r\n"
            b'{"error": "too many connections from client"}\n')


def _refuse(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.write(_REFUSED)
        transport.close()


def cap_connections(server: web.Server, per_ip: int, refused: Callable[[], None]) -> None:
    """Refuse a client IP's connections beyond `per_ip` (a 503, then close). aiohttp's server calls
    its `connection_made` / `connection_lost` once per connection: we count there."""
    open_by_ip: Counter[str] = Counter()
    ip_of: dict[RequestHandler, str] = {}
    made, lost = server.connection_made, server.connection_lost

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        peer = transport.get_extra_info("peername")
        ip = client_key(peer[0] if peer else None)
        ip_of[handler] = ip
        open_by_ip[ip] += 1
        if open_by_ip[ip] > per_ip:
            refused()
            # after the handler's task has started (it is scheduled next): closing inside
            # connection_made would run connection_lost before aiohttp's handler is set up
            asyncio.get_running_loop().call_soon(_refuse, transport)

    def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
        ip = ip_of.pop(handler, None)
        if ip is not None:
            open_by_ip[ip] -= 1
            if open_by_ip[ip] <= 0:
                del open_by_ip[ip]
        lost(handler, exc)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]


_libc: ctypes.CDLL | None = None


MMAP_THRESHOLD = 1024 * 1024
ARENA_MAX = 2


def release_freed_memory() -> None:
    """glibc raises its mmap threshold after a large block is freed, so later 2 MiB request bodies
    land in the heap, and the heap does not shrink when they are freed: RSS stays at the peak
    after an upload flood. A fixed threshold keeps every large buffer in its own mapping, returned
    to the OS when freed. No-op where the C library is not glibc.

    It also caps glibc's malloc arenas at ARENA_MAX. By default each thread that allocates (the loop,
    the trio p2p thread, the ledger and verifier workers) may get its own arena, up to 8 per core, and
    a buffer freed by another thread than the one that allocated it leaves holes in both: at 1,200
    writes/s a validator's anonymous memory was 225 MB with the default and 173 MB with 2 arenas.
    The GIL serialises nearly all allocation anyway, so the arenas' locks are not contended."""
    global _libc
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        if "MALLOC_ARENA_MAX" not in os.environ:  # an operator's own setting wins
            _libc.mallopt(m_arena_max, ARENA_MAX)  # before the worker threads start (node/run.py)
        # 1 MiB, not lower: below it are the hot path's buffers (msgpack packers, blocks, forwarded
        # batches), which an mmap and munmap per allocation made 40% dearer per transaction
        _libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
        _libc.mallopt(m_trim_threshold, 4 * 1024 * 1024)
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        _libc = None
        log.debug("mallopt unavailable: large freed buffers may stay in the heap")


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS. Bodies arrive in chunks of tens of KiB, below the
    mmap threshold: once freed they leave holes that only malloc_trim returns (glibc only)."""
    if _libc is not None:
        _libc.malloc_trim(0)
