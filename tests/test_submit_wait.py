"""POST /v1/tx?wait=S on a real validator process: the answer comes with the commit and carries
what GET /v1/tx/{id} would (certified header, audit path, proven receipt), so a phone that waits for
each write makes one request."""

from __future__ import annotations

import aiohttp

from node.crypto.keys import Identity
from node.proof import verify_status
from node.sidecar import encode_submission
from node.tx import Profile, Tx
from tests.conftest import run


def test_a_submission_that_waits_is_answered_with_its_proven_commit(node, genesis):
    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async def post(tx: Tx, query: str = "") -> tuple[int, dict]:
                async with s.post(f"{node.url}/v1/tx{query}", data=encode_submission(tx.raw, None),
                                  headers={"Content-Type": "application/msgpack"}) as r:
                    return r.status, await r.json()

            ident = Identity.from_seed(b"submit-wait test")
            tx = Tx.build(ident, genesis.chain_id, 1, Profile("W", "nurse", "Ward", ident.box_public))
            status, st = await post(tx, "?wait=20")
            assert status == 200 and st["id"] == tx.id.hex() and st["status"] == "committed", st
            header = verify_status(tx.id, st, genesis.validator_keys, genesis.chain_id)
            assert header.height == st["height"] and st["code"] == 0
            # without a wait: accepted, nothing more (as before)
            ident2 = Identity.from_seed(b"submit-wait test 2")
            tx2 = Tx.build(ident2, genesis.chain_id, 1, Profile("V", "nurse", "Ward", ident2.box_public))
            status, st = await post(tx2)
            assert status == 202 and st == {"id": tx2.id.hex(), "status": "pending"}
            # a resubmission of a committed transaction is refused, with or without a wait
            status, st = await post(tx, "?wait=5")
            assert status == 409 and "error" in st, (status, st)
            ident3 = Identity.from_seed(b"submit-wait test 3")
            tx3 = Tx.build(ident3, genesis.chain_id, 1, Profile("U", "nurse", "Ward", ident3.box_public))
            status, st = await post(tx3, "?wait=soon")
            assert status == 400 and "wait" in st["error"], st
    run(go())
