"""Large answers are written within the client's and the server's in-flight budgets and the body
timeout (node/api/limits.py): a client that never reads an 8 MiB answer no longer keeps it in the
server's memory for as long as its connection stays open. A real aiohttp server on 127.0.0.1 with
the API's own Limits middleware; the slow client is a real socket that does not read."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
from aiohttp import web

from node.api.limits import Limits
from node.genesis import Params

MIB = 1024 * 1024


async def _serve(limits: Limits, body: bytes) -> tuple[web.AppRunner, int]:
    app = web.Application(middlewares=[limits.middleware])

    async def big(req: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    app.router.add_get("/big", big)
    app.router.add_post("/big", big)  # as POST /v1/txs answers a batch with its per-item results
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _slow_reader(port: int) -> socket.socket:
    """Asks for the answer and reads none of it (a tiny receive window: the kernels hold little)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(s, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def test_a_client_that_does_not_read_holds_the_budget_only_until_the_body_timeout() -> None:
    scopes: list[str] = []
    limits = Limits(Params(client_body_bytes=4 * MIB, server_body_bytes=12 * MIB, body_timeout_ms=1500),
                    scopes.append, 1)
    body = os.urandom(8 * MIB)

    async def go() -> None:
        runner, port = await _serve(limits, body)
        try:
            slow = await _slow_reader(port)
            for _ in range(100):  # its answer is being written: the first large one always goes
                if limits.out_total:
                    break
                await asyncio.sleep(0.01)
            assert limits.out_flight["127.0.0.1"] == len(body)
            async with aiohttp.ClientSession() as c:
                async with c.get(f"http://127.0.0.1:{port}/big") as r:  # a second one from that IP
                    assert r.status == 429 and r.headers["Retry-After"] == "1"
                    assert "too many response bytes in flight to 127.0.0.1" in (await r.json())["error"]
                async with c.post(f"http://127.0.0.1:{port}/big") as r:  # a POST's answer reports what
                    assert r.status == 200 and await r.read() == body  # was done: never replaced
                await asyncio.sleep(2.0)  # past the body timeout: the slow connection is cut
                assert "slow_reader" in scopes and limits.out_total == 0 and not limits.out_flight
                async with c.get(f"http://127.0.0.1:{port}/big") as r:  # and a reader gets it whole
                    assert r.status == 200 and await r.read() == body
            assert limits.out_total == 0
            got = b""
            loop = asyncio.get_running_loop()
            try:
                while chunk := await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 5):
                    got += chunk
            except ConnectionResetError:
                pass
            assert len(got) < len(body)  # it was cut off, not served
            slow.close()
        finally:
            await runner.cleanup()

    asyncio.run(go())


def test_small_answers_and_one_large_answer_per_client_are_not_held_back() -> None:
    scopes: list[str] = []
    limits = Limits(Params(client_body_bytes=1 * MIB, server_body_bytes=2 * MIB), scopes.append, 1)
    body = os.urandom(2 * MIB)  # larger than a client's budget (half the server's): still served, alone

    async def go() -> None:
        runner, port = await _serve(limits, body)
        try:
            async with aiohttp.ClientSession() as c:
                for _ in range(3):
                    async with c.get(f"http://127.0.0.1:{port}/big") as r:
                        assert r.status == 200 and await r.read() == body
            assert scopes == [] and limits.out_total == 0
        finally:
            await runner.cleanup()

    asyncio.run(go())
