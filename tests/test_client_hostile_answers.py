"""What one validator's answers can make a client do (devices/patient/client.py): a real aiohttp
server plays the validator and answers with what a byzantine one could send."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from devices.net.localnet import free_ports
from devices.patient.client import RETRY_FOR, ApiError, NodeClient, retry_after
from node.crypto.keys import Identity


def test_retry_after_is_a_finite_positive_wait_of_at_most_retry_for() -> None:
    assert [retry_after(x) for x in ("2.5", 3, "1e9", "inf", "nan", "-1", "0", "soon", None)] == \
        [2.5, 3.0, RETRY_FOR, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert retry_after("nan", 0.0) == 0.0 and retry_after(None, 0.0) == 0.0


@contextlib.asynccontextmanager
async def _serving(routes: dict[tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]],
                   port: int = 0) -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 answering `routes` ((method, path): handler); its URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class _Busy:
    """Answers GET /v1/status with 503 and the given Retry-After `refusals` times, then 200."""

    def __init__(self, retry: str, refusals: int = 1) -> None:
        self.retry, self.refusals, self.asked = retry, refusals, 0

    async def status(self, _req: web.Request) -> web.Response:
        self.asked += 1
        if self.asked <= self.refusals:
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": self.retry})
        return web.json_response({"ok": True})

    def serving(self) -> contextlib.AbstractAsyncContextManager[str]:
        return _serving({("GET", "/v1/status"): self.status})


@pytest.mark.parametrize("retry", ["nan", "-5", "inf"])
def test_a_retry_after_that_is_no_number_of_seconds_is_waited_as_one_second(retry: str) -> None:
    """`Retry-After: nan` parsed as a float made the client sleep for ever (asyncio.sleep(nan)) and
    its deadline never came: one validator froze every read and submission of a phone."""
    async def go() -> None:
        async with _Busy(retry).serving() as url, NodeClient(url) as c:
            assert await asyncio.wait_for(c.status(), 20) == {"ok": True}
    asyncio.run(go())


def test_a_retry_after_past_the_client_s_patience_is_raised_at_once() -> None:
    async def go() -> None:
        busy = _Busy("1e9", refusals=10)
        async with busy.serving() as url, NodeClient(url) as c:
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
        cid = cid_v1_raw(b"the real ciphertext")
        routes = {("GET", "/v1/status"): status, ("GET", "/v1/genesis"): genesis, ("GET", "/v1/blobs/{cid}"): endless}
        async with _serving(routes) as url, NodeClient(url) as c:
            with pytest.raises(BlobMismatch, match="more than 19 bytes"):
                await asyncio.wait_for(c.download(Identity.from_seed(b"staff"), "chain", str(cid),
                                                  cid.to_bytes(), size=19), 30)
        assert sent[0] < 64 << 20  # the server was cut off long before it ran out
    asyncio.run(go())


@pytest.mark.parametrize("answer", [{"results": [{"status": 202}]}, {"results": [{}, {}]}, {"results": "ok"}, [1, 2],
                                    {"results": [{"status": "202"}, {"status": 202}]}])
def test_a_batch_answer_without_a_status_for_each_transaction_is_a_502(answer: object) -> None:
    """The fleet's lanes and the load generator read `r["status"]` of each result: a validator
    answering fewer results, or results without a status, killed a lane (KeyError, or zip's
    length check). It is a refusal of the whole batch now, which they take as for now."""
    async def go() -> None:
        async def txs(_req: web.Request) -> web.Response:
            return web.json_response(answer)
        async with _serving({("POST", "/v1/txs"): txs}) as url, NodeClient(url) as c:
            with pytest.raises(ApiError) as err:
                await c.submit_many([b"tx one", b"tx two"])
            assert err.value.status == 502 and "without a status for each" in err.value.reason
    asyncio.run(go())


@pytest.mark.parametrize("reported, start", [((5, 5, 6, 10**6), 5), ((0, 5, 5, 6), 5), ((5, 10**6, None, None), 5),
                                             ((7, "high", -1, None), 7)])
def test_a_run_follows_from_a_height_no_honest_validator_had_passed(reported: tuple, start: int) -> None:
    """The load generator and the fleet followed from one validator's reported head: a liar's higher
    one skipped the run's first blocks. With 2f+1 reports the (f+1)-th lowest, else the lowest."""
    from devices.load.follow import start_height

    def answer(h: object) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def status(_req: web.Request) -> web.Response:
            return web.json_response({"height": h}) if h is not None else web.json_response({}, status=404)
        return status

    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(_serving({("GET", "/v1/status"): answer(h)})) for h in reported]
            clients = [await stack.enter_async_context(NodeClient(u)) for u in urls]
            assert await start_height(clients) == start
    asyncio.run(go())


def test_a_verdict_is_the_refusal_most_gave_alike_numbers_aside_and_the_client_s_own_counts_last() -> None:
    from devices.patient.commits import _verdict
    home = ApiError(403, "refused: break-glass refused: the patient has disabled emergency access")
    a = ApiError(409, "stale nonce: 1 already used (replay?); next is 5")
    b = ApiError(409, "stale nonce: 1 already used (replay?); next is 6")
    assert _verdict({"home": home, "a": a, "b": b}, "home") == (a, 2)  # honest reasons differ in numbers
    assert _verdict({"home": home, "a": a}, "home") == (a, 1)  # a tie: not the client's own validator's word
    assert _verdict({"a": a, "home": home}, "home") == (a, 1)


def test_a_refusal_is_no_outcome_while_the_client_s_own_validator_may_hold_the_transaction() -> None:
    """The client's own validator took the transaction (pending); another refuses it (a byzantine
    one, 400); the other two are down until the deadline. The outcome is "pending", never that one
    refusal: raised, it told a patient a revoke did not happen while it committed (from a review)."""
    from devices.patient.commits import TxRejected, wait_proven
    from devices.patient.verified_reads import VerifiedReader
    from node.crypto.keys import Identity
    from node.tx import Policy, Tx

    async def pending(_req: web.Request) -> web.Response:
        return web.json_response({"status": "pending"})

    async def refuse(_req: web.Request) -> web.Response:
        return web.json_response({"error": "refused: bad signature"}, status=400)

    async def go() -> None:
        tx = Tx.build(Identity.from_seed(b"a patient"), "chain", 1, Policy(False))
        keys = [Identity.from_seed(bytes([i]) * 8).public_key for i in range(4)]
        down = [f"http://127.0.0.1:{p}" for p in free_ports(2)]
        async with _serving({("GET", "/v1/tx/{id}"): pending}) as home, \
                _serving({("POST", "/v1/tx"): refuse}) as liar, NodeClient(home) as c:
            reader = VerifiedReader([home, liar, *down], "chain", keys)
            try:
                with pytest.raises(TxRejected) as out:
                    await wait_proven(c, tx.id.hex(), 3.0, keys, "chain", reader, {"status": "pending"},
                                      None, (tx.raw, None), None, None)
                assert out.value.status == {"status": "pending"}
            finally:
                await reader.close()
    asyncio.run(go())


def test_the_failover_sends_again_to_a_busy_validator_only_after_its_retry_after() -> None:
    """A validator down at the failover's first round, then busy (429, Retry-After: 3): the same
    bytes go to it again once its Retry-After has passed, not every round. Before, each later round
    cut the client's own wait at 2 s and sent again at once: a busy validator was asked every 2 s
    by every client failing over to it, whatever it said."""
    from devices.patient.commits import _failover
    from devices.patient.verified_reads import VerifiedReader
    from node.crypto.keys import Identity
    from node.tx import Policy, Tx

    async def go() -> list[float]:
        loop = asyncio.get_running_loop()
        posts: list[float] = []

        async def busy(_req: web.Request) -> web.Response:
            posts.append(loop.time())
            return web.json_response({"error": "pool full"}, status=429, headers={"Retry-After": "3"})

        tx = Tx.build(Identity.from_seed(b"a busy patient"), "chain", 1, Policy(False))
        keys = [Identity.from_seed(bytes([i]) * 8).public_key for i in range(4)]
        port = free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"

        async def up_late() -> None:
            await asyncio.sleep(1)  # after the first round's send found it down
            async with _serving({("POST", "/v1/tx"): busy}, port=port):
                await asyncio.sleep(8)

        server = asyncio.create_task(up_late())
        reader = VerifiedReader([url], "chain", keys)
        try:
            out = await _failover(tx.id.hex(), (tx.raw, None), [url], reader, 8.0, keys, "chain", {}, set())
            assert out == {"status": "pending"}  # busy is no refusal
        finally:
            server.cancel()
            await reader.close()
        return posts

    posts = asyncio.run(go())
    assert len(posts) >= 2, posts  # sent again once the wait had passed
    assert all(b - a >= 2.9 for a, b in itertools.pairwise(posts)), posts


def test_a_break_glass_limit_is_a_refusal_the_failover_counts_not_a_busy_validator() -> None:
    """A 429 for a staff member's emergency reads over the patient's limit lasts until its window
    ends: 2f+1 validators saying so alike end the failover with that refusal (the staff client turns
    it into AccessDenied). Taken as "busy, ask again later" it waited out the deadline and ended
    "pending"."""
    from devices.patient.commits import _failover
    from devices.patient.verified_reads import VerifiedReader
    from node.crypto.keys import Identity
    from node.tx import Policy, Tx

    async def limit(_req: web.Request) -> web.Response:
        return web.json_response({"error": "refused: break-glass limit reached until its window ends in 3600 s"},
                                 status=429, headers={"Retry-After": "3600"})

    async def go() -> None:
        tx = Tx.build(Identity.from_seed(b"an emergency"), "chain", 1, Policy(False))
        keys = [Identity.from_seed(bytes([i]) * 8).public_key for i in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(_serving({("POST", "/v1/tx"): limit})) for _ in range(3)]
            reader = VerifiedReader(urls, "chain", keys)
            try:
                with pytest.raises(ApiError, match="break-glass") as err:
                    await _failover(tx.id.hex(), (tx.raw, None), urls, reader, 3.0, keys, "chain", {}, set())
                assert err.value.status == 429
            finally:
                await reader.close()
    asyncio.run(go())


# ---- a lying validator's malformed answers (a review of the client trust path) -------------------

def test_a_commit_certified_over_a_view_past_msgpack_s_range_is_a_proof_error_not_an_overflow() -> None:
    """JSON ints are unbounded: `cert_view` 2**64 made the vote digest's encoding raise OverflowError,
    which the failover did not take as a failed proof: one validator's fake commit stopped the write
    instead of sending it to the others."""
    from node.block import Header
    from node.proof import ProofError, verify_status

    keys = [Identity.from_seed(bytes([i]) * 8).public_key for i in range(4)]
    h = Header("chain", 1, bytes(32), 0, 1, 1, bytes(32), bytes(32), 0)
    st = {"status": "committed", "header": h.encode().hex(), "certificate": [[i, "00" * 64] for i in range(3)],
          "cert_view": 2**64, "index": 0, "tx_count": 1, "proof": []}
    with pytest.raises(ProofError, match="out of range"):
        verify_status(bytes(32), st, keys, "chain")


def test_json_nested_past_the_parser_s_depth_or_past_its_size_is_a_502() -> None:
    """A validator's answer of "[" * 100,000 raised RecursionError through every caller (none
    expected one), and an endless body was buffered to its end; both are ApiError (502) now."""
    import devices.patient.client as client_mod

    async def nested(_req: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    async def endless(_req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(_req)
        for _ in range(100):
            await resp.write(b" " * 4096)
        return resp

    async def go() -> None:
        async with _serving({("GET", "/v1/status"): nested, ("GET", "/v1/genesis"): endless}) as url, \
                NodeClient(url) as c:
            with pytest.raises(ApiError, match="no JSON") as err:
                await c.status()
            assert err.value.status == 502
            with pytest.raises(ApiError, match="more than 300000 bytes") as err:
                await c.genesis()
            assert err.value.status == 502
    old = client_mod.MAX_JSON
    client_mod.MAX_JSON = 300_000
    try:
        asyncio.run(go())
    finally:
        client_mod.MAX_JSON = old


def test_a_head_report_past_msgpack_s_range_or_nested_json_counts_as_no_report() -> None:
    """A validator answering GET /v1/head with a height of 2**64 (OverflowError in the digest) or
    with JSON nested past the parser's depth (RecursionError) broke every proven read of every
    client that listed it; such a report is now no report, and the honest ones count."""
    from devices.patient.verified_reads import VerifiedReader
    from node.tx.requests import head_digest

    idents = [Identity.from_seed(bytes([i]) * 8) for i in range(4)]
    keys = [i.public_key for i in idents]

    def honest(ident: Identity, height: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def head(req: web.Request) -> web.Response:
            nonce = bytes.fromhex(req.query["nonce"])
            sig = ident.sign(head_digest("chain", ident.public_key, nonce, height))
            return web.json_response({"validator": ident.public_key.hex(), "height": height, "signature": sig.hex()})
        return head

    async def huge(_req: web.Request) -> web.Response:
        return web.json_response({"validator": keys[2].hex(), "height": 2**64, "signature": "00" * 64})

    async def nested(_req: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    async def go() -> dict:
        async with contextlib.AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(_serving({("GET", "/v1/head"): h}))
                    for h in (honest(idents[0], 7), honest(idents[1], 9), huge, nested)]
            async with NodeClient(urls[0]) as c:
                return await VerifiedReader(urls, "chain", keys, session=c.session)._heads()
    assert asyncio.run(go()) == {keys[0]: 7, keys[1]: 9}


def test_a_busy_validator_s_retry_after_holds_a_client_with_others_to_ask_no_longer_than_its_timer() -> None:
    """The client's validator answers 429 with Retry-After: 59. The submission retried for up to a
    minute whatever the caller's deadline, and the failover then had about a second left; with
    others to ask it now waits no longer than its own timer and hands the transaction over."""
    from devices.patient.commits import submit_waiting
    from node.tx import Policy, Tx

    async def busy(_req: web.Request) -> web.Response:
        return web.json_response({"error": "pool full"}, status=429, headers={"Retry-After": "59"})

    async def go() -> tuple:
        tx = Tx.build(Identity.from_seed(b"a hurried patient"), "chain", 1, Policy(False))
        async with _serving({("POST", "/v1/tx"): busy}) as url, NodeClient(url) as c:
            return await asyncio.wait_for(submit_waiting(c, tx, None, 5.0, True), 20)
    answer, _, refusal = asyncio.run(go())
    assert answer is None and refusal is not None and refusal.status == 429


def test_a_download_refused_as_possibly_replayed_is_signed_anew_once_and_requests_are_signed_in_order() -> None:
    """While a validator's record of served signed requests is full, it serves a signer only requests
    signed later than the last it served that way, and refuses others 401 "sign a new one". The
    client signs each blob request later than its last (concurrent downloads too) and signs a
    refused one anew, once."""
    from node.ipfs.cid import cid_v1_raw

    me = Identity.from_seed(b"a full validator")
    blob = b"the ciphertext"
    times: list[int] = []

    async def status(_req: web.Request) -> web.Response:
        return web.json_response({"validator_index": 0})

    async def genesis(_req: web.Request) -> web.Response:
        return web.json_response({"validators": [{"public_key": me.public_key.hex()}]})

    async def get(req: web.Request) -> web.Response:
        times.append(int(req.headers["X-Medchain-Time"]))
        if len(times) == 1:
            return web.json_response({"error": "this signed request is no newer than one of this key served while "
                                               "the record of served requests was full, so it could be a replay: "
                                               "sign a new one"}, status=401)
        return web.Response(body=blob)

    async def go() -> list[bytes]:
        cid = cid_v1_raw(blob)
        routes = {("GET", "/v1/status"): status, ("GET", "/v1/genesis"): genesis, ("GET", "/v1/blobs/{cid}"): get}
        async with _serving(routes) as url, NodeClient(url) as c:
            staff = Identity.from_seed(b"staff")
            return await asyncio.gather(*(c.download(staff, "chain", str(cid), cid.to_bytes()) for _ in range(3)))
    assert asyncio.run(go()) == [blob] * 3
    assert len(times) == 4 and len(set(times)) == 4  # one refused, signed anew; no two signed alike
