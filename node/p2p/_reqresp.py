"""Request-response over libp2p streams (trio side): one new stream per request.

Wire format (both directions on the requester's stream):

    request  = u32be length || request bytes
    response = u8 status || u32be length || body
               status 0: body is the handler's response
               status 1: the handler raised; body is a short UTF-8 reason
               status 2: the request was over the server's max_request; body is the reason

Only validator peers may open or be sent these streams (the connection gate admits only
genesis peer ids, and each stream is checked again here). The asyncio handler is run on the
validator's loop through ``call`` (a thread-safe function returning a concurrent future).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.exceptions import StreamReset
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from ._streamio import StreamClosedEarly, StreamReader

log = logging.getLogger("medchain.p2p")

OK, HANDLER_ERROR, TOO_LARGE = 0, 1, 2
SERVE_TIMEOUT = 60.0  # an inbound request (read, handle, reply) never holds a stream longer
ERROR_MAX = 1024  # bytes of a handler's error reason sent to the requester
MAX_REQUEST_STREAMS = 16  # inbound requests served at once per peer (over all request protocols)
MAX_REQUEST_WAITING = 240  # and waiting for one of those slots; beyond, the stream is reset

# (protocol, peer name, request) -> future of (status, body), resolved on the asyncio loop
HandlerCall = Callable[[str, str, bytes], concurrent.futures.Future]


class RequestFailed(Exception):
    """Carried back to the asyncio side and re-raised there as P2PError."""


async def await_future(token: trio.lowlevel.TrioToken, fut: concurrent.futures.Future) -> Any:
    """Wait on the trio thread for a future resolved on another thread."""
    done = trio.Event()

    def wake(_f: concurrent.futures.Future) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        raise
    return fut.result()


async def serve_stream(side: Any, stream: Any, protocol: str, max_request: int, call: HandlerCall) -> None:
    name = side.allowed.get(stream.muxed_conn.peer_id)
    if name is None:  # the gate admits only validators (and bitswap-only peers): never trust it
        side.stats["unknown_dropped"] += 1
        with contextlib.suppress(Exception):
            await stream.reset()
        return
    # each request served may hold a reply of up to 16 MiB until it is read: MAX_REQUEST_STREAMS of a
    # peer's are served at once, the next wait (holding at most their request), and past
    # MAX_REQUEST_WAITING more a stream is reset
    sem = side.request_slots.get(name)
    if sem is None:
        sem = side.request_slots[name] = trio.Semaphore(MAX_REQUEST_STREAMS)

    async def served() -> None:
        async with sem:
            await _serve(side, stream, name, protocol, max_request, call)
    await side.slots.serve(stream, name, "request", MAX_REQUEST_STREAMS + MAX_REQUEST_WAITING, served)


async def _serve(side: Any, stream: Any, name: str, protocol: str, max_request: int, call: HandlerCall) -> None:
    reader = StreamReader(stream)
    try:
        with trio.fail_after(SERVE_TIMEOUT):
            n = int.from_bytes(await reader.exactly(4), "big")
            if n > max_request:
                side.stats["oversized"] += 1
                reason = f"request of {n} bytes over the limit of {max_request} for {protocol}".encode()
                await stream.write(bytes([TOO_LARGE]) + len(reason).to_bytes(4, "big") + reason)
                await stream.close()
                return
            request = await reader.exactly(n)
            status, body = await await_future(side.token, call(protocol, name, request))
            await stream.write(bytes([status]) + len(body).to_bytes(4, "big") + body)
            await stream.close()
    except Exception as exc:  # noqa: BLE001 - EOF, reset, timeout: the requester sees it
        log.debug("serving %s to %s failed: %r", protocol, name, exc)
        with trio.CancelScope(shield=True), trio.move_on_after(0.5), contextlib.suppress(Exception):
            await stream.reset()


async def request(
    side: Any,
    name: str,
    protocol: str,
    payload: bytes,
    timeout: float,
    max_response: int,
) -> bytes:
    """One request to validator ``name``; raises RequestFailed with a readable reason."""
    o = side.outs[name]
    what = f"{protocol} request to {name}"
    stream = None
    try:
        with trio.fail_after(timeout):
            if not side.host.get_network().get_connections(o.pid):
                side.host.get_network().unblock_peer(o.pid)
                await side.host.connect(PeerInfo(o.pid, [o.addr]))
            stream = await side.host.new_stream(o.pid, [TProtocol(protocol)])
            await stream.write(len(payload).to_bytes(4, "big") + payload)
            reader = StreamReader(stream)
            head = await reader.exactly(5)
            status, n = head[0], int.from_bytes(head[1:], "big")
            limit = max_response if status == OK else ERROR_MAX
            if n > limit:
                raise RequestFailed(f"{what}: response of {n} bytes over max_response {limit}")
            body = await reader.exactly(n)
            with contextlib.suppress(Exception):
                await stream.close()
            stream = None
        if status == OK:
            return body
        reason = body.decode("utf-8", "replace")
        if status == HANDLER_ERROR:
            raise RequestFailed(f"{what}: the peer's handler failed: {reason}")
        if status == TOO_LARGE:
            raise RequestFailed(f"{what}: refused by the peer: {reason}")
        raise RequestFailed(f"{what}: unknown response status {status}")
    except trio.TooSlowError:
        raise RequestFailed(f"{what} timed out after {timeout:g} s") from None
    except (MultiselectClientError, StreamFailure) as exc:
        # py-libp2p wraps a refused protocol negotiation in StreamFailure
        if isinstance(exc, MultiselectClientError) or isinstance(exc.__cause__, MultiselectClientError):
            raise RequestFailed(f"{what}: the peer does not serve this protocol") from None
        raise RequestFailed(f"{what}: could not open a stream ({exc})") from None
    except StreamReset:
        raise RequestFailed(f"{what}: stream reset by the peer") from None
    except StreamClosedEarly as exc:
        raise RequestFailed(f"{what}: the peer closed the stream early ({exc})") from None
    except RequestFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - dial failures, connection lost
        raise RequestFailed(f"{what} failed: {exc!r}") from None
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(0.5), contextlib.suppress(Exception):
                await stream.reset()
