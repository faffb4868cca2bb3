"""Who may fetch or upload a blob, through real validator processes (node/api/blobs.py): a committed
read whose result was a refusal opens nothing; a signed request just outside the allowed clock
skew is refused while one just inside is served; a captured download is served once, and only by
the validator it names."""

from __future__ import annotations

import hashlib
import time

import aiohttp

from devices.patient.client import NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.wearable.wearables import make_wearable
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.ipfs.cid import Cid
from node.state.machine import BREAK_GLASS_LIMIT
from node.tx import Read, Tx
from node.tx.requests import blob_request_digest, blob_upload_digest
from tests.conftest import run, running_network

SKEW_MS = Params().request_skew_ms
MARGIN_MS = 5_000  # far above the time a request takes on loopback, far below the skew itself


async def _write_one(c: NodeClient, genesis: Genesis, pat: Identity) -> tuple[str, bytes]:
    phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
    now = int(time.time() * 1000)
    res = await phone.write_window("heart_rate", list(make_wearable("heart_rate", "hr", 1).frames_between(
        now - 60_000, now)))
    return res.cid, Cid.parse(res.cid).to_bytes()


def test_a_committed_but_refused_read_opens_no_blob(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"refused-read-patient"), Identity.from_seed(b"refused-read-doctor")
            cid, cid_b = await _write_one(c, genesis, pat)
            await Staff(doc, c, genesis.chain_id).register("Dr. R", "physician", "org")
            # one emergency read over the limit: admission checks each against committed state only,
            # so all are admitted together and the last is refused in execution (code 11, committed)
            reads = [Tx.build(doc, genesis.chain_id, 2 + i, Read(pat.address, 1, b"", 0, 2**62, "ETREAT"))
                     for i in range(BREAK_GLASS_LIMIT + 1)]
            assert [r["status"] for r in await c.submit_many([t.raw for t in reads])] == [202] * len(reads)
            codes = [(await c.wait_committed(t.id.hex()))["code"] for t in reads]
            assert codes == [0] * BREAK_GLASS_LIMIT + [11]
            # an allowed emergency read opens the blob (so the refusal below is about the result) ...
            assert await c.download(doc, genesis.chain_id, cid, cid_b, reads[0].id)
            # ... the committed refusal does not
            status, body = await _get_blob(c, doc, genesis.chain_id, cid, cid_b, reads[-1].id,
                                           int(time.time() * 1000))
            assert status == 403 and "not an allowed read" in body, body

    run(go())


async def _get_blob(c: NodeClient, ident: Identity, chain_id: str, cid: str, cid_b: bytes, read_id: bytes,
                    t_ms: int) -> tuple[int, str]:
    """GET /v1/blobs/{cid} signed at a chosen time (the client library always signs with now)."""
    headers = {"X-Medchain-Pubkey": ident.public_key.hex(), "X-Medchain-Time": str(t_ms),
               "X-Medchain-Signature": ident.sign(blob_request_digest(chain_id, await c.validator_key(), cid_b, read_id,
                                                                      t_ms)).hex()}
    if read_id:
        headers["X-Medchain-Read"] = read_id.hex()
    async with aiohttp.ClientSession() as s, s.get(f"{c.base}/v1/blobs/{cid}", headers=headers) as resp:
        return resp.status, (await resp.read()).decode(errors="replace")


async def _put_blob(c: NodeClient, ident: Identity, chain_id: str, data: bytes, t_ms: int) -> tuple[int, str]:
    sig = ident.sign(blob_upload_digest(chain_id, hashlib.sha256(data).digest(), len(data), t_ms))
    headers = {"Content-Type": "application/octet-stream", "X-Medchain-Pubkey": ident.public_key.hex(),
               "X-Medchain-Time": str(t_ms), "X-Medchain-Signature": sig.hex()}
    async with aiohttp.ClientSession() as s, s.post(f"{c.base}/v1/blobs", data=data, headers=headers) as resp:
        return resp.status, (await resp.read()).decode(errors="replace")


def test_signed_blob_requests_just_outside_the_skew_are_refused(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            pat = Identity.from_seed(b"skew-patient")
            cid, cid_b = await _write_one(c, genesis, pat)
            for offset in (SKEW_MS + MARGIN_MS, -(SKEW_MS + MARGIN_MS)):  # too old, too far ahead
                status, body = await _get_blob(c, pat, genesis.chain_id, cid, cid_b, b"",
                                               int(time.time() * 1000) - offset)
                assert status == 401 and "too far" in body, (offset, body)
                status, body = await _put_blob(c, pat, genesis.chain_id, b"late %d" % offset,
                                               int(time.time() * 1000) - offset)
                assert status == 401 and "too far" in body, (offset, body)
            for offset in (SKEW_MS - MARGIN_MS, -(SKEW_MS - MARGIN_MS)):  # just inside: served
                assert (await _get_blob(c, pat, genesis.chain_id, cid, cid_b, b"",
                                        int(time.time() * 1000) - offset))[0] == 200
                assert (await _put_blob(c, pat, genesis.chain_id, b"in time %d" % offset,
                                        int(time.time() * 1000) - offset))[0] == 201

    run(go())


def test_a_captured_download_is_served_once_and_by_the_validator_it_names(tmp_path):
    """Headers captured off the wire (plain HTTP) open nothing: the validator asked serves them
    once, every other validator finds the signature bad (it names the validator asked)."""
    with running_network(tmp_path, 4) as nodes:
        async def go():
            async with NodeClient(nodes[1].url) as c1:
                g = Genesis.load(nodes[1].home / "genesis.json")
                pat = Identity.from_seed(b"captured-download patient")
                cid, cid_b = await _write_one(c1, g, pat)
                t = int(time.time() * 1000)
                assert (await _get_blob(c1, pat, g.chain_id, cid, cid_b, b"", t))[0] == 200
                status, body = await _get_blob(c1, pat, g.chain_id, cid, cid_b, b"", t)  # the same headers again
                assert status == 401 and "used already" in body, body
                for other in (nodes[0], nodes[2], nodes[3]):
                    async with NodeClient(other.url) as co:
                        co._validator_key = await c1.validator_key()  # the captured request, as it was signed
                        status, body = await _get_blob(co, pat, g.chain_id, cid, cid_b, b"", t + 1)
                        assert status == 401 and "bad request signature" in body, (other.url, body)
                        # a request signed for that validator is served there
                        co._validator_key = None
                        assert await co.download(pat, g.chain_id, cid, cid_b)
        run(go())
