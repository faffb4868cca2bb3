"""Bad input over the real API: a clear 4xx, no change of state, and the node keeps serving."""

from __future__ import annotations

import time

import aiohttp
import pytest

from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.wearable.wearables import make_wearable
from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.ipfs.cid import cid_v1_raw
from node.tx import KIND_PROFILE, Grant, Profile, Read, Tx
from node.wire import encode
from tests.conftest import run

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def raw_tx(ident: Identity, fields: list, signer: Identity | None = None, sig: bytes | None = None) -> bytes:
    payload = encode(fields)
    if sig is None:
        sig = (signer or ident).sign(ecdsa.sha256(payload))
    return encode([payload, sig])


def profile_fields(ident, chain, nonce, name="n", kind=KIND_PROFILE, version=1):
    return [version, kind, chain, ident.public_key, nonce, name, "r", "o", bytes(32)]


async def post(c: NodeClient, body: bytes) -> tuple[int, str]:
    async with c.session.post(c.base + "/v1/tx", data=body) as r:
        j = await r.json()
        return r.status, j.get("error", "")


def test_bad_transactions(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            alice, mallory = Identity.from_seed(b"alice"), Identity.from_seed(b"mallory")
            good = Tx.build(alice, chain, 1, Profile("alice", "r", "o", alice.box_public))
            await c.submit(good.raw)
            assert (await c.wait_committed(good.id.hex()))["status"] == "committed"
            before = await c.status()

            p2 = profile_fields(alice, chain, 2)
            valid_sig = alice.sign(ecdsa.sha256(encode(p2)))
            high_s = valid_sig[:32] + (N - int.from_bytes(valid_sig[32:], "big")).to_bytes(32, "big")
            cases = [
                (b"\xc1", 400, "malformed msgpack"),
                (good.raw[:-5], 400, "malformed msgpack"),
                (good.raw + b"\x00", 400, "trailing bytes"),
                (encode({"a": 1}), 400, "malformed msgpack"),
                (b"\x00" * 20_000, 413, "too large"),
                (raw_tx(alice, profile_fields(alice, chain, 2, name="x" * 65)), 400, "name must be"),
                (raw_tx(alice, profile_fields(alice, chain, 2, kind=0x7F)), 400, "unknown transaction kind"),
                (raw_tx(alice, profile_fields(alice, chain, 2, version=9)), 400, "unsupported transaction version"),
                (raw_tx(alice, p2, signer=mallory), 400, "bad signature"),
                (raw_tx(alice, p2, sig=high_s), 400, "bad signature"),
                (raw_tx(alice, p2, sig=bytes(64)), 400, "bad signature"),
                (raw_tx(alice, profile_fields(alice, "other-chain", 2)), 400, "wrong chain id"),
                (good.raw, 409, "already committed"),
                (raw_tx(alice, profile_fields(alice, chain, 1, name="again")), 409, "stale nonce"),
                (raw_tx(alice, profile_fields(alice, chain, 7)), 409, "out of order"),
            ]
            for body, status, reason in cases:
                got = await post(c, body)
                assert got[0] == status and reason in got[1], (body[:40], got)
            # a reason quoting a 15 KB field is cut short, in the answer and in what is kept for
            # GET /v1/tx (50,000 such reasons would otherwise hold 3 GB)
            long = raw_tx(alice, profile_fields(alice, chain, 2, version=b"v" * 15_000))
            status, reason = await post(c, long)
            assert status == 400 and reason.startswith("invalid transaction: unsupported transaction version b'vvv")
            assert len(reason) == 240 and reason.endswith("...")
            kept = await c.tx(ecdsa.sha256(long).hex())
            assert kept["status"] == "rejected" and kept["reason"] == reason, kept
            # high-S is rejected although (r, n-s) is the same signature mathematically
            assert ecdsa.verify(alice.public_key, ecdsa.sha256(encode(p2)), valid_sig)

            after = await c.status()
            assert after["height"] == before["height"] and after["mempool_size"] == 0
            assert (await c.account(alice.address))["nonce"] == 1
            assert (await c.tx(ecdsa.sha256(good.raw[:-5]).hex()))["status"] == "rejected"
            # still serving: the valid next transaction commits
            ok = Tx.build(alice, chain, 2, Profile("alice2", "r", "o", alice.box_public))
            await c.submit(ok.raw)
            assert (await c.wait_committed(ok.id.hex()))["code"] == 0
    run(go())


def test_policy_attacks(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            pat, doc, mallory = (Identity.from_seed(s) for s in (b"pp", b"dd", b"mm"))
            phone = Phone(pat, c, chain, genesis.validator_keys)
            staff, mstaff = Staff(doc, c, chain), Staff(mallory, c, chain)
            await staff.register("D", "physician", "H")
            await mstaff.register("M", "physician", "H")
            now = int(time.time() * 1000)
            res = await phone.write_window("glucose", list(make_wearable("glucose", "g", 1).frames_between(now - 3_600_000, now)))

            # a grant carrying the patient's key but signed by mallory
            forged = [1, Grant.kind, chain, pat.public_key, 2, mallory.address, [4], 0, []]
            assert await post(c, raw_tx(pat, forged, signer=mallory)) == (400, "invalid transaction: bad signature (invalid, not by the sender, or high-S)")
            # mallory "granting" herself the patient's data only edits mallory's own (empty) record
            own = Tx.build(mallory, chain, 2, Grant(doc.address, (4,), 0, ()))
            await c.submit(own.raw)
            await c.wait_committed(own.id.hex())
            with pytest.raises(Exception, match="denied"):
                await mstaff.read(pat.address, "glucose")
            with pytest.raises(Exception, match="denied"):
                await staff.read(pat.address, "glucose")

            # a read of a CID that is not on chain
            await phone.grant(doc.address, ["glucose"])
            ghost = cid_v1_raw(b"not on chain").to_bytes()
            r = Tx.build(doc, chain, 2, Read(pat.address, 4, ghost, 0, 0))
            assert await post(c, r.raw) == (404, "refused: cid is not on chain")
            # ...and the real one works
            wins = await staff.read(pat.address, "glucose", cid=res.cid)
            assert len(wins) == 1
            h = (await c.status())["height"]
            assert await post(c, r.raw) == (404, "refused: cid is not on chain")
            assert (await c.status())["height"] == h
    run(go())


def test_bad_http_requests(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            s = c.session
            async with s.post(node.url + "/v1/blobs", data=b"\x00" * (genesis.params.max_blob_bytes + 1)) as r:
                assert r.status == 413 and "too large" in (await r.json())["error"]
            async with s.get(node.url + "/v1/tx/zz") as r:
                assert r.status == 400
            from node.api.chain import PROOFS_BODY_MAX  # read within the body budgets like every route
            async with s.post(node.url + "/v1/proofs", data=b"\x00" * (PROOFS_BODY_MAX + 1)) as r:
                assert r.status == 413 and "too large" in (await r.json())["error"]
            async with s.get(node.url + "/v1/tx/" + "00" * 32) as r:
                assert r.status == 404 and (await r.json())["status"] == "unknown"
            async with s.get(node.url + "/v1/blocks/999") as r:
                assert r.status == 404
            async with s.get(node.url + "/v1/blocks/" + "9" * 5000) as r:  # past int()'s digit limit
                assert r.status == 404
            async with s.get(node.url + "/v1/blobs/notacid") as r:
                assert r.status == 400 and "bad cid" in (await r.json())["error"]
            async with s.post(node.url + "/v1/blobs", data=b"some ciphertext") as r:  # unsigned upload
                assert r.status == 401 and "signed upload" in (await r.json())["error"]
            with pytest.raises(ApiError) as ei:  # signed, by a key with no committed transaction
                await c.upload(b"some ciphertext", Identity.from_seed(b"nobody"), genesis.chain_id)
            assert ei.value.status == 403
            cid = str(cid_v1_raw(b"some ciphertext"))
            async with s.get(node.url + "/v1/blobs/" + cid) as r:
                assert r.status == 401 and "signed request" in (await r.json())["error"]
            ident = Identity.from_seed(b"q")
            with pytest.raises(ApiError) as ei:  # signed, but the blob is not on chain
                await c.download(ident, genesis.chain_id, cid, cid_v1_raw(b"some ciphertext").to_bytes())
            assert ei.value.status == 404
            with pytest.raises(ApiError) as ei:  # signature over another cid
                await c.download(ident, genesis.chain_id, cid, cid_v1_raw(b"x").to_bytes())
            assert ei.value.status == 401
            async with s.get(node.url + "/v1/accounts/abcd") as r:
                assert r.status == 400
            assert (await c.status())["height"] == 0
    run(go())


def test_rate_limit_429(tmp_path):
    from devices.net.localnet import make_network
    from node.genesis import Params
    (n,) = make_network(tmp_path, 1, params=Params(sender_rate=5, sender_burst=5, block_interval_ms=2000))
    n.start()
    try:
        async def go():
            async with NodeClient(n.url) as c:
                g = await c.genesis()
                a, b = Identity.from_seed(b"flood"), Identity.from_seed(b"calm")
                codes = []
                for i in range(1, 12):
                    async with c.session.post(n.url + "/v1/tx", data=Tx.build(a, g["chain_id"], i, Profile("f", "r", "o", bytes(32))).raw) as r:
                        codes.append((r.status, r.headers.get("Retry-After")))
                        if r.status == 429:
                            assert "rate limited" in (await r.json())["error"]
                            break
                assert [s for s, _ in codes[:5]] == [202] * 5 and codes[5][0] == 429 and int(codes[5][1]) >= 1
                # another sender is unaffected
                assert await c.submit(Tx.build(b, g["chain_id"], 1, Profile("c", "r", "o", bytes(32))).raw)
        run(go())
    finally:
        n.stop()


def test_client_disconnect_does_not_hurt(node, genesis):
    """A client that sends half a body and hangs up loses nothing and breaks nothing."""
    import socket
    s = socket.create_connection(("127.0.0.1", node.port))
    s.sendall(b"POST /v1/tx HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n\x92\xc4")
    s.close()

    async def go():
        async with NodeClient(node.url) as c:
            assert (await c.status())["height"] == 0
    run(go())
    assert aiohttp  # the client library is the one the devices use


@pytest.mark.parametrize("bad, why", [
    ("glucose frame", "is of characteristic 10776, not 0x2a37"),
    ("garbage frame", "is not a heart_rate frame"),
    ("negative time", "time_ms must be a non-negative int"),
])
def test_a_window_holding_another_characteristic_or_a_broken_frame_is_never_sealed(bad, why):
    """A device on the short-range link sending glucose notifications into the heart-rate window (or
    frames that do not decode) must not have them sealed under the heart-rate key, which a staff
    member granted only heart rate holds: refused before anything is signed or sent (the client
    points nowhere). (Found by a review: the row decoded as glucose at the staff member's.)"""
    hr = list(make_wearable("heart_rate", "hr", seed=1).frames_between(0, 5000))
    glucose = next(make_wearable("glucose", "g", seed=1).frames_between(0, 3_600_000))
    row = {"glucose frame": (hr[0][0], glucose[1], glucose[2]), "garbage frame": (hr[0][0], hr[0][1], b"\xff"),
           "negative time": (-1, hr[0][1], hr[0][2])}[bad]
    phone = Phone(Identity.from_seed(b"window checks"), NodeClient("http://127.0.0.1:9"), "c")
    with pytest.raises(ValueError, match=why):
        run(phone.write_window("heart_rate", [*hr, row]))
