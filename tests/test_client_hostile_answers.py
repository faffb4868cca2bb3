"""What one validator's answers can make a client do (devices/patient/client.py): a real aiohttp
server plays the validator and answers with what a byzantine one could send."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from devices.net.localnet import free_ports
from devices.patient.client import RETRY_FOR, ApiError, NodeClient, retry_after


def test_retry_after_is_a_finite_positive_wait_of_at_most_retry_for() -> None:
    assert [retry_after(x) for x in ("2.5", 3, "1e9", "inf", "nan", "-1", "0", "soon", None)] == \
        [2.5, 3.0, RETRY_FOR, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert retry_after("nan", 0.0) == 0.0 and retry_after(None, 0.0) == 0.0


class _Busy:
    """Answers GET /v1/status with 503 and the given Retry-After `refusals` times, then 200."""

    def __init__(self, retry: str, refusals: int = 1) -> None:
        self.retry, self.refusals, self.asked = retry, refusals, 0
        self.port = free_ports(1)[0]

    async def __aenter__(self) -> str:
        async def status(_req: web.Request) -> web.Response:
            self.asked += 1
            if self.asked <= self.refusals:
                return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": self.retry})
            return web.json_response({"ok": True})
        app = web.Application()
        app.router.add_get("/v1/status", status)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize("retry", ["nan", "-5", "inf"])
def test_a_retry_after_that_is_no_number_of_seconds_is_waited_as_one_second(retry: str) -> None:
    """`Retry-After: nan` parsed as a float made the client sleep for ever (asyncio.sleep(nan)) and
    its deadline never came: one validator froze every read and submission of a phone."""
    async def go() -> None:
        async with _Busy(retry) as url, NodeClient(url) as c:
            assert await asyncio.wait_for(c.status(), 20) == {"ok": True}
    asyncio.run(go())


def test_a_retry_after_past_the_client_s_patience_is_raised_at_once() -> None:
    async def go() -> None:
        busy = _Busy("1e9", refusals=10)
        async with busy as url, NodeClient(url) as c:
            with pytest.raises(ApiError) as err:
                await asyncio.wait_for(c.status(), 20)
            assert err.value.status == 503 and err.value.retry_after == RETRY_FOR and busy.asked == 1
    asyncio.run(go())


def test_a_blob_download_stops_at_its_proven_size() -> None:
    """A validator streaming without end in answer to a blob request: the client read it all into
    memory before checking it against the CID. It stops one chunk past the size a proof gave."""
    from devices.patient.client import BlobMismatch
    from node.crypto.keys import Identity
    from node.ipfs.cid import cid_v1_raw

    me = Identity.from_seed(b"a validator")
    sent = [0]

    async def endless(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        try:
            while sent[0] < 1 << 30:
                await resp.write(bytes(1 << 20))
                sent[0] += 1 << 20
        except ConnectionError:  # the client hung up
            pass
        return resp

    async def status(_req: web.Request) -> web.Response:
        return web.json_response({"validator_index": 0})

    async def genesis(_req: web.Request) -> web.Response:
        return web.json_response({"validators": [{"public_key": me.public_key.hex()}]})

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/v1/status", status)
        app.router.add_get("/v1/genesis", genesis)
        app.router.add_get("/v1/blobs/{cid}", endless)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_ports(1)[0]
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            cid = cid_v1_raw(b"the real ciphertext")
            async with NodeClient(f"http://127.0.0.1:{port}") as c:
                with pytest.raises(BlobMismatch, match="more than 19 bytes"):
                    await asyncio.wait_for(c.download(Identity.from_seed(b"staff"), "chain", str(cid),
                                                      cid.to_bytes(), size=19), 30)
        finally:
            await runner.cleanup()
        assert sent[0] < 64 << 20  # the server was cut off long before it ran out
    asyncio.run(go())
