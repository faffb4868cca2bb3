"""Who may fetch or upload a blob (node/api/blobs.py). Through real validator processes: a committed
read whose result was a refusal opens nothing; a signed request just outside the allowed clock
skew is refused while one just inside is served; a captured download is served once, and only by
the validator it names. In this process: the blob authorisation itself (`read_covers`) on a real
validator's LMDB ledger holding real committed state, each refusal at its boundary (so
`make mutation` can map its mutants to these tests)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import aiohttp
import pytest

from devices.net.localnet import dev_issuer
from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.wearable.wearables import make_wearable
from node.api import blobs
from node.api.common import SeenRequests
from node.crypto.ecdsa import sha256
from node.crypto.keys import Identity
from node.execution import build_block
from node.genesis import Genesis, IssuerInfo, Params, init_home
from node.ipfs.cid import CODEC_DAG_PB, CODEC_RAW, Cid
from node.ipfs.unixfs import import_bytes
from node.state.machine import BREAK_GLASS_ACCESS_MS, BREAK_GLASS_LIMIT
from node.tx import DATA_TYPES, Grant, Policy, Profile, Read, SealedKey, Tx, Write
from node.tx.credential import issue
from node.tx.requests import blob_request_digest, blob_upload_digest
from node.uploads import UploadBudget
from node.validator import Validator
from node.wire import encode
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
            await Staff(doc, c, genesis.chain_id).register(
                "Dr. R", "physician", "org", issue(dev_issuer(node.home), genesis.chain_id, doc.address, 2**62))
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
    sig = ident.sign(blob_upload_digest(chain_id, await c.validator_key(), hashlib.sha256(data).digest(), len(data), t_ms))
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
                height = (await c1.status())["height"]
                for other in (nodes[0], nodes[2], nodes[3]):
                    async with NodeClient(other.url) as co:
                        while (await co.status())["height"] < height:  # it has committed the write too
                            await asyncio.sleep(0.05)
                        co._validator_key = await c1.validator_key()  # the captured request, as it was signed
                        status, body = await _get_blob(co, pat, g.chain_id, cid, cid_b, b"", t + 1)
                        assert status == 401 and "bad request signature" in body, (other.url, body)
                        # a request signed for that validator is served there
                        co._validator_key = None
                        assert await co.download(pat, g.chain_id, cid, cid_b)
        run(go())


# ---- _read_covers in this process, on a real validator's ledger ---------------------------------------
T = 1_700_000_000_000  # block 1's time, and the reads' block time
DAY = 24 * 3600 * 1000
HR, BP = DATA_TYPES["heart_rate"], DATA_TYPES["blood_pressure"]
PAT, PAT2 = Identity.from_seed(b"covers-patient"), Identity.from_seed(b"covers-patient-2")
DOC, NURSE = Identity.from_seed(b"covers-doctor"), Identity.from_seed(b"covers-nurse")
LOCUM = Identity.from_seed(b"covers-locum")  # a clinician whose credential ends an hour after T
HOUR = 3600 * 1000
CID_A, CID_B = (b"\x01\x55\x12\x20" + hashlib.sha256(n).digest() for n in (b"a", b"b"))
EXPIRY = T + 2 * DAY  # the doctor's heart-rate grant
OUTSIDE = "the blob is outside the read transaction's time range (which ends at its block's time)"


@pytest.fixture(scope="module")
def covers(tmp_path_factory):
    """A validator (constructed, not started) whose ledger holds blocks executed and committed by the
    node's own code: the doctor's grant, reads allowed and refused, emergency reads, an opt-out."""
    issuer = Identity.from_seed(b"covers-issuer")
    home = init_home(tmp_path_factory.mktemp("covers"), "read-covers", ["127.0.0.1:0"], 0,
                     issuers=(IssuerInfo("covers", issuer.public_key.hex()),))[0]
    v, loop = Validator(home), asyncio.new_event_loop()
    nonces: dict[bytes, int] = {}

    def tx(ident, body):
        nonces[ident.address] = nonces.get(ident.address, 0) + 1
        return Tx.build(ident, v.chain_id, nonces[ident.address], body)

    def commit(txs, time_ms):
        ex = build_block(v.pipeline.head_tip(), txs, v.chain_id, 0, 0, time_ms)
        loop.run_until_complete(v.committer.commit(ex.block, ex))
        return dict(zip((t.id for t in txs), ex.codes, strict=True))

    staff = [tx(DOC, Profile("Dr C", "physician", "org", DOC.box_public)),
             tx(NURSE, Profile("N C", "nurse", "org", NURSE.box_public,
                               issue(issuer, "read-covers", NURSE.address, T + 10 * DAY))),
             tx(LOCUM, Profile("L C", "locum", "org", LOCUM.box_public,
                               issue(issuer, "read-covers", LOCUM.address, T + HOUR))),
             tx(PAT, Write(HR, CID_B, 100, 0, T - 60_000, T))]
    ids = {
        "write": tx(PAT, Write(HR, CID_A, 100, 0, T - 60_000, T)),
        "grant": tx(PAT, Grant(DOC.address, (HR,), EXPIRY, ())),
    }
    codes = commit([*staff, *ids.values()], T - 1000)
    reads = {
        "cid": tx(DOC, Read(PAT.address, HR, CID_A, 0, 0)),
        "range": tx(DOC, Read(PAT.address, HR, b"", T - 60_000, T)),
        "refused": tx(DOC, Read(PAT.address, BP, b"", 0, T)),  # no grant for blood pressure: code 3
        "emergency": tx(NURSE, Read(PAT.address, BP, b"", 0, T, "ETREAT")),
        "locum_emergency": tx(LOCUM, Read(PAT.address, BP, b"", 0, T, "ETREAT")),
        "opted_out": tx(NURSE, Read(PAT2.address, HR, b"", 0, T, "ETREAT")),  # allowed, then opted out
        "open": tx(DOC, Read(PAT.address, HR, b"", 0, 2**62)),  # a range into the future: it ends at T
    }
    codes |= commit(list(reads.values()), T)
    codes |= commit([tx(PAT2, Policy(False))], T + 1000)
    # the nurse held heart rate's epoch 0 key, was revoked (heart rate moves to epoch 1), then reads
    # by break-glass
    held = [tx(PAT, Grant(NURSE.address, (HR,), 0, (SealedKey(HR, 0, bytes(80)),))),
            tx(PAT, Grant(NURSE.address, (), 0, ()))]
    codes |= commit(held, T + 1500)
    reads["revoked_emergency"] = tx(NURSE, Read(PAT.address, HR, b"", 0, T, "ETREAT"))
    codes |= commit([reads["revoked_emergency"]], T + 2000)
    ids |= reads
    assert codes == {**dict.fromkeys(codes, 0), ids["refused"].id: 3}
    yield v, {k: t.id for k, t in ids.items()}
    loop.run_until_complete(v.stop())
    loop.close()


def _covers(monkeypatch, covers, name, now_ms=T, reader=DOC, patient=PAT, dtype=HR, cid=CID_A,
            t0=T - 60_000, t1=T, read_id=None, written=1, epoch=0):
    """read_covers with the clock at `now_ms` (the only thing not taken from the ledger), for a blob
    recorded at height `written` under key `epoch` (the reads are at height 2)."""
    v, ids = covers
    monkeypatch.setattr(blobs.clock, "now_ms", lambda: now_ms)
    return blobs.read_covers(v, ids[name] if read_id is None else read_id, reader.address, patient.address,
                             dtype, cid, t0, t1, written, epoch)


def test_read_covers_serves_the_blobs_a_committed_read_allows(monkeypatch, covers):
    assert _covers(monkeypatch, covers, "cid") is None
    assert _covers(monkeypatch, covers, "cid", t0=0, t1=1) is None  # a cid read: the blob's times do not matter
    assert _covers(monkeypatch, covers, "range", cid=CID_B) is None  # a range read: any blob of the range
    for t0, t1 in ((T, T + 5), (T - 70_000, T - 60_000)):  # touching either end of the range
        assert _covers(monkeypatch, covers, "range", t0=t0, t1=t1) is None
    assert _covers(monkeypatch, covers, "write", reader=PAT) == \
        "that transaction is not an allowed read by this requester"  # the patient's own write is no read
    assert _covers(monkeypatch, covers, "emergency", reader=NURSE, dtype=BP) is None  # no grant needed
    assert _covers(monkeypatch, covers, "open", t0=T, t1=T + 5, written=2) is None  # its own block, at its time


@pytest.mark.parametrize(("name", "kw", "why"), [
    ("cid", {"read_id": b""}, "staff must name their committed read transaction (X-Medchain-Read)"),
    ("cid", {"read_id": bytes(31)}, "staff must name their committed read transaction (X-Medchain-Read)"),
    ("cid", {"read_id": bytes(33)}, "staff must name their committed read transaction (X-Medchain-Read)"),
    ("cid", {"read_id": bytes(32)}, "the read transaction is not committed"),
    ("refused", {"dtype": BP, "t0": 0}, "that transaction is not an allowed read by this requester"),
    ("cid", {"reader": NURSE}, "that transaction is not an allowed read by this requester"),
    ("grant", {"reader": PAT}, "that transaction is not an allowed read by this requester"),
    ("cid", {"patient": PAT2}, "the read transaction is for another patient or data type"),
    ("cid", {"dtype": BP}, "the read transaction is for another patient or data type"),
    ("cid", {"cid": CID_B}, "the read transaction names another cid"),
    ("range", {"t0": T + 1, "t1": T + 5}, OUTSIDE),
    ("range", {"t0": T - 70_000, "t1": T - 60_001}, OUTSIDE),
    ("open", {"t0": T + 1, "t1": T + 5}, OUTSIDE),  # the range is capped at the read's block time
    ("open", {"written": 3}, "the blob was written after the read transaction committed: commit a new read"),
    ("cid", {"written": 3}, "the blob was written after the read transaction committed: commit a new read"),
    ("opted_out", {"reader": NURSE, "patient": PAT2},
     "break-glass refused: the patient has disabled emergency access"),
])
def test_read_covers_refuses_each_case_for_its_own_reason(monkeypatch, covers, name, kw, why):
    assert _covers(monkeypatch, covers, name, **kw) == why


def test_read_covers_applies_the_patient_s_policy_and_the_emergency_window_now(monkeypatch, covers):
    """Checked at download time, not at the read's commit: the grant's expiry, and the emergency
    read's access window counted from its block time (T), each at its last allowed millisecond."""
    assert _covers(monkeypatch, covers, "cid", now_ms=EXPIRY - 1) is None
    assert _covers(monkeypatch, covers, "cid", now_ms=EXPIRY) == "access denied by the patient's current policy"
    assert _covers(monkeypatch, covers, "range", now_ms=EXPIRY) == "access denied by the patient's current policy"
    bg = {"reader": NURSE, "dtype": BP}
    # less than 24 hours after the read's block time (docs/PROTOCOL.md 7), as a release's expiry ends it
    assert _covers(monkeypatch, covers, "emergency", now_ms=T + BREAK_GLASS_ACCESS_MS - 1, **bg) is None
    assert _covers(monkeypatch, covers, "emergency", now_ms=T + BREAK_GLASS_ACCESS_MS, **bg) == \
        "the break-glass read is too old: commit a new one"


def test_a_break_glass_download_needs_the_clinician_credential_still_valid(monkeypatch, covers):
    """The credential is checked when the emergency read commits, and again at each download: a
    clinician whose credential ended (dismissed, a locum's term over) no longer fetches for the rest
    of the read's 24-hour window (a review)."""
    bg = {"reader": LOCUM, "dtype": BP}
    assert _covers(monkeypatch, covers, "locum_emergency", now_ms=T + HOUR - 1, **bg) is None
    assert _covers(monkeypatch, covers, "locum_emergency", now_ms=T + HOUR, **bg) == \
        "break-glass refused: this reader no longer holds a valid clinician credential"


def test_break_glass_does_not_undo_a_revocation(monkeypatch, covers):
    """A revoked staff member keeps the keys once sealed to it: a break-glass read must not hand it the
    ciphertexts of those epochs (the data itself, the patient's revocation undone; from a review).
    Later epochs' ciphertexts it cannot open: break-glass serves those."""
    bg = {"reader": NURSE, "now_ms": T + 3000}
    assert _covers(monkeypatch, covers, "revoked_emergency", epoch=0, **bg).startswith(
        "break-glass refused: this reader was given this blob's key epoch and no longer holds access")
    assert _covers(monkeypatch, covers, "revoked_emergency", epoch=1, **bg) is None


def test_a_stranger_cannot_record_another_patients_blob_under_another_cid(node, genesis):
    """The blob store is keyed by hash, and a download is allowed to a blob's patient of record: a
    stranger who recorded another patient's large (dag-pb) blob under a second CID of the same bytes
    (its CIDv0, its hash as a raw CID, or one of its raw leaves) downloaded it, unaudited. Each such
    write is refused now: a write names a CIDv1 of sha2-256 only, and a blob is held for a write only
    if it is listed as a root of the write's codec."""
    async def go():
        async with NodeClient(node.url) as c:
            chain = genesis.chain_id
            pat, stranger = Identity.from_seed(b"alias-patient"), Identity.from_seed(b"alias-stranger")
            first = Tx.build(pat, chain, 1, Profile("p", "patient", "", pat.box_public))  # uploads need one
            await c.submit(first.raw)
            await c.wait_committed(first.id.hex())
            big = Phone(pat, c, chain, genesis.validator_keys, pad_to=(1 << 20) + 4096)
            now = int(time.time() * 1000)
            res = await big.write_window("heart_rate", list(make_wearable("heart_rate", "hr", 1).frames_between(
                now - 60_000, now)))
            root = Cid.parse(res.cid)
            blob = await c.download(pat, chain, res.cid, root.to_bytes())
            leaf = next(cid for cid in import_bytes(blob)[1] if cid.codec == CODEC_RAW)
            assert root.codec == CODEC_DAG_PB and len(blob) == res.size > 1 << 20
            await c.submit(Tx.build(stranger, chain, 1, Profile("s", "patient", "", stranger.box_public)).raw)

            async def submit(nonce: int, cid: bytes, size: int) -> tuple[int, str]:
                payload = encode([1, Write.kind, chain, stranger.public_key, nonce, HR, cid, size, 0, now, now + 1])
                try:
                    await c.submit(encode([payload, stranger.sign(sha256(payload))]))
                except ApiError as exc:
                    return exc.status, exc.reason
                return 202, ""
            v0 = root.multihash  # the CIDv0 of the dag-pb root: the same bytes
            assert await submit(2, v0, res.size) == (400, "invalid transaction: cid: a write names a binary CIDv1, "
                                                          "raw or dag-pb, with a sha2-256 digest (36 bytes)")
            status, why = await submit(2, b"\x01\x55" + root.multihash, res.size)  # its hash as a raw CID
            assert status == 409 and why == "refused: cid already recorded", why  # the recorded CID's twin
            status, why = await submit(2, leaf.to_bytes(), 1 << 20)  # a raw leaf of its DAG
            assert status == 422 and why.startswith("blob not held"), why
            status, _ = await _get_blob(c, stranger, chain, res.cid, root.to_bytes(), b"", int(time.time() * 1000))
            assert status == 403
            assert (await c.audit(pat.address))["reads"] == []

    run(go())


def test_the_record_of_served_requests_never_drops_one_that_could_be_replayed():
    """Full, the record answers "retry later" (the API's 503) instead of dropping its oldest entry: a
    flood that evicted a captured request let it be served again within the clock skew."""
    seen = SeenRequests(keep_s=60, cap=3)
    assert [seen.first_use(s, 0) for s in (b"a", b"b", b"c")] == ["ok", "ok", "ok"]
    assert seen.first_use(b"d", 1) == "full" and seen.retry_s(1) == 60
    assert seen.first_use(b"a", 59) == "replay"  # still a replay: nothing was dropped for "d"
    assert seen.first_use(b"d", 60.5) == "ok"  # a, b and c expired at 60
    assert seen.first_use(b"a", 61) == "ok" and seen.retry_s(61) == 60
    # one signer holds at most its share, so it cannot fill the record for everyone
    per = SeenRequests(keep_s=60, cap=10, per_signer=2)
    assert [per.first_use(s, 0, b"P") for s in (b"1", b"2", b"3")] == ["ok", "ok", "quota"]
    assert per.first_use(b"4", 5, b"Q") == "ok" and per.retry_s(5, b"P") == 56 and per.retry_s(5, b"Q") == 61
    assert per.first_use(b"3", 60.5, b"P") == "ok"  # its first two expired


def test_sybil_accounts_from_one_client_address_fill_only_its_share_of_the_upload_budget():
    """Any account with a committed transaction may upload; 16 fresh ones from one address, each
    within its own share, filled the whole budget and held every other uploader at 503 for the
    grace (a review). One client address now holds at most a quarter of it."""
    mib = 1024 * 1024
    b = UploadBudget(window_s=600, per_account=64 * mib, total=1024 * mib)
    sybils = [bytes([k]) * 32 for k in range(16)]
    took = 0
    for k, who in enumerate(sybils):
        for j in range(32):
            if b.refusal(who, 2 * mib, k + j / 100, "10.0.0.66") is None:
                b.take(who, 2 * mib, k + j / 100, b"r%d-%d" % (k, j), "10.0.0.66")
                took += 1
    assert took == 128 and b.bytes == 256 * mib  # a quarter: 4 accounts' worth
    status, why, wait = b.refusal(sybils[5], 2 * mib, 20, "10.0.0.66")
    assert status == 429 and "per client address" in why and wait == 580  # its oldest went in at 0
    assert b.refusal(b"h" * 32, 2 * mib, 20, "10.0.0.7") is None  # another address's uploads go on


def test_a_full_record_still_serves_requests_signed_later_than_any_its_signer_had_served_past_it():
    """A few Sybil keys at their share filled the record (20,000 entries each), and every signed
    download and upload then got 503 for everyone (a review). Past the record, a signer's request is
    served if it is signed later than any that signer had served that way; one at or before that
    time could be a replay of it and is refused ("stale"), until the mark outlives the skew."""
    seen = SeenRequests(keep_s=60, cap=2, per_signer=1, marks=2)
    assert seen.first_use(b"s1", 0, b"S", 1000) == "ok"  # recorded
    assert seen.first_use(b"m1", 0, b"M", 1000) == "ok"  # recorded: the record is full now
    assert seen.first_use(b"h1", 1, b"H", 5000) == "ok"  # past the full record: H's mark is 5000
    assert seen.first_use(b"h1", 2, b"H", 5000) == "stale"  # its replay
    assert seen.first_use(b"h0", 2, b"H", 4999) == "stale"  # or anything of H's signed no later
    assert seen.first_use(b"h2", 3, b"H", 5001) == "ok"  # later: served, the mark moves on
    assert seen.first_use(b"s2", 3, b"S", 1001) == "ok"  # S at its share: served past it likewise
    assert seen.first_use(b"s1", 3, b"S", 1000) == "replay"  # the recorded one is still a replay
    assert seen.first_use(b"q1", 4, b"Q", 9000) == "full"  # no room for a third mark: retry later
    assert seen.first_use(b"q1", 4, b"Q") == "full"  # without its time: the record's answer as before
    assert seen.first_use(b"h1", 64, b"H", 5000) == "ok"  # marks and entries gone (the time check refuses it by then)


def test_uploads_are_single_use_and_bounded_per_account_within_the_grace(node, genesis):
    """A standalone upload is signed for the validator it is sent to and stored once (a captured one
    replayed emptied its signer's rate); what one account uploads within the collection grace is
    bounded (one account stored ~113 MB/s before, and could fill a validator's disk)."""
    async def go():
        async with NodeClient(node.url) as c:
            chain, who = genesis.chain_id, Identity.from_seed(b"upload budget")
            first = Tx.build(who, chain, 1, Profile("u", "patient", "", who.box_public))
            await c.submit(first.raw)
            await c.wait_committed(first.id.hex())
            t = int(time.time() * 1000)
            data = b"replayed" * 1000
            sig = who.sign(blob_upload_digest(chain, await c.validator_key(), hashlib.sha256(data).digest(), len(data), t))
            headers = {"Content-Type": "application/octet-stream", "X-Medchain-Pubkey": who.public_key.hex(),
                       "X-Medchain-Time": str(t), "X-Medchain-Signature": sig.hex()}
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{c.base}/v1/blobs", data=data, headers=headers) as r:
                    assert r.status == 201
                async with s.post(f"{c.base}/v1/blobs", data=data, headers=headers) as r:
                    assert r.status == 401 and "used already" in (await r.json())["error"]
            big = genesis.params.max_blob_bytes
            budget = max(64 << 20, 32 * big)
            stored = len(data)
            last = b""
            for k in range(budget // big):
                status, body = await _put_blob(c, who, chain, k.to_bytes(4, "big") * (big // 4), int(time.time() * 1000))
                if status != 201:
                    break
                stored, last = stored + big, body
            assert status == 429 and "upload budget: at most 64 MiB of uploads per account" in body, (status, body)
            assert budget - big < stored <= budget
            # a write that names an upload pins it: its bytes are the chain's, and the account may upload again
            cid = Cid.parse(json.loads(last)["cid"])
            now = int(time.time() * 1000)
            pin = Tx.build(who, chain, 2, Write(HR, cid.to_bytes(), big, 0, now, now + 1))
            await c.submit(pin.raw)
            assert (await c.wait_committed(pin.id.hex()))["code"] == 0
            again = (b"after the pin" * (big // 13 + 1))[:big]  # as large as the one refused
            assert (await _put_blob(c, who, chain, again, int(time.time() * 1000)))[0] == 201
            other = Identity.from_seed(b"upload budget, another account")
            first = Tx.build(other, chain, 1, Profile("o", "patient", "", other.box_public))
            await c.submit(first.raw)
            await c.wait_committed(first.id.hex())
            assert (await _put_blob(c, other, chain, b"its own budget", int(time.time() * 1000)))[0] == 201

    run(go())


def test_the_upload_budget_counts_bytes_per_account_and_in_all_within_its_window():
    """Uploads count per account and in all until a write pins them or the grace ends (an upload of
    the same blob again is counted once); each counts at least 4 KiB."""
    b = UploadBudget(window_s=10, per_account=10_240, total=25_000, per_origin=10**9)
    a, c, d = b"a" * 32, b"c" * 32, b"d" * 32
    assert b.refusal(a, 6000, 0) is None
    b.take(a, 6000, 0, b"r1")
    b.take(a, 6000, 0.5, b"r1")  # the same blob again: counted once
    assert b.refusal(a, 4000, 1) is None and b.refusal(a, 4241, 1)[:1] == (429,)
    b.take(a, 4000, 2, b"r2")  # counted as 4,096: 10,096 in all
    status, why, wait = b.refusal(a, 1, 3)
    assert status == 429 and wait == 7 and "per account" in why  # its oldest leaves the window at 10
    b.take(c, 9000, 3, b"r3")
    status, why, wait = b.refusal(d, 5905, 4)  # 19,096 + 5,905 > 25,000 in all
    assert status == 503 and wait == 6 and "retry later" in why
    assert b.refusal(d, 5904, 4) is None
    b.pinned([b"r1", b"unknown"])  # a committed write named r1: it is the chain's now
    assert b.bytes == 13_096 and b.refusal(a, 6000, 4) is None
    assert b.refusal(a, 6145, 4)[:1] == (429,)
    assert b.refusal(a, 6001, 12) is None and b.bytes == 9000  # r2 left the window
    b.pinned([b"r3"])
    assert b.bytes == 0 and b.refusal(d, 10_240, 20) is None
    assert b.refusal(d, 10_241, 20) == (429, b.refusal(d, 10_241, 20)[1], 10)  # more than an account's all


def test_the_upload_budget_counts_uploads_being_stored_and_a_blob_uploaded_again_after_its_pin():
    """Uploads of one account stored concurrently each see the others' bytes (before, each passed
    the check alone and all were counted after their awaits: a review); a blob uploaded again after a
    write pinned it is counted for its own grace, not dropped when its first upload's grace ends;
    and a refusal's wait skips what was pinned without walking the whole log."""
    b = UploadBudget(window_s=10, per_account=10_240, total=25_000, per_origin=10**9)
    a, c = b"a" * 32, b"c" * 32
    first = b.hold(a, 6000)
    assert b.refusal(a, 6000, 0)[:1] == (429,) and b.refusal(a, 4240, 0) is None
    b.release(a, first)
    b.take(a, 6000, 0, b"r1")
    assert b.bytes == 6000 and b.refusal(a, 4240, 0) is None and b.refusal(a, 4241, 0)[:1] == (429,)
    b.pinned([b"r1"])
    b.take(a, 6000, 2, b"r1")  # the same blob, uploaded again after its pin
    assert b.refusal(a, 4241, 9.0)[2] == 3.0  # its wait: from the upload counted, not the pinned one
    assert b.refusal(a, 4241, 10.5)[:1] == (429,) and b.bytes == 6000  # its first upload's grace ended: still counted
    for k in range(1000):  # pinned at once: they stay in the log until their grace ends
        b.take(c, 1, 3, b"p%d" % k)
        b.pinned([b"p%d" % k])
    b.take(c, 19_000, 4, b"big")
    assert b.refusal(a, 1, 5)[:2] == (503, b.refusal(a, 1, 5)[1]) and b.refusal(a, 1, 5)[2] == 7.0  # r1 at 2
    assert b.refusal(a, 1, 12.5) is None and b.bytes == 19_000  # r1's own grace ended
