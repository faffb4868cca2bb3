"""Clients trust no single validator: a rewriting HTTP proxy in front of one real validator of a
real 4-validator devnet lies in each way a validator could (swapped X25519 key, lower epoch, dropped
or forged audit entries, forged grants, a tampered sealed key, a forged header, a stale header,
another transaction's commit answer given for ours, a wrong result code, another ciphertext for a
blob, another CID for an upload); the phone and the staff client refuse every lie, name the proxy,
and succeed through honest validators.
Also: a validator whose stored state was rewritten while it was stopped refuses to start."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import lmdb
import pytest
from aiohttp import web

from devices.net.localnet import free_ports
from devices.patient import envelope
from devices.patient.client import ApiError, BlobMismatch, NodeClient
from devices.patient.commits import wait_proven
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.patient.verified_reads import NoHonestAnswer, VerifiedReader
from devices.wearable.wearables import make_wearable
from node.crypto import seal
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import Cid, cid_v1_raw
from node.proof import ProofError
from node.sidecar import SIDECAR_MAX
from node.state import keys
from node.tx import DATA_TYPES, Profile, Tx, Write
from node.wire import decode, encode
from tests.conftest import run, running_network

MALLORY = Identity.from_seed(b"mallory")
HR = DATA_TYPES["heart_rate"]


# what a validator says of a client's submission (POST /v1/tx), and of its status (GET /v1/tx/{id})
SUBMISSION_LIES = {"reject_tx": ({"status": "pending"},),
                   "refuse_tx": ({"error": "refused: break-glass refused: the patient has disabled emergency "
                                  "access"}, 403),
                   "malformed_tx": ({},)}
STATUS_LIES = {"reject_tx": {"status": "rejected", "reason": "superseded: its nonce was committed with another "
                                                           "transaction"},
               "malformed_tx": {}}


class LyingProxy:
    """Forwards every request to `upstream`; rewrites `POST /v1/proofs` answers per `mode`."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.mode = upstream, "honest"
        self.recorded: dict[bytes, bytes] = {}  # request body -> first answer, for "replay"
        self.decoy = b""  # mode "tx_decoy": the answer every GET /v1/tx/{id} gets (another tx's commit)
        self.paths: list[str] = []
        self.forged_blob = b""  # mode "blob": the answer to every blob download
        self.forged_cid = ""  # mode "upload_cid": the CID every standalone upload is answered with
        self.swallow = False  # mode "tx_decoy": submissions are answered with the decoy too, and dropped
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    async def _handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        self.paths.append(req.path)
        if self.mode == "tx_decoy" and (req.path.startswith("/v1/tx/") or (req.path == "/v1/tx" and self.swallow)):
            return web.Response(body=self.decoy, content_type="application/json")
        if self.mode == "hang_proofs" and req.path == "/v1/proofs":
            await asyncio.sleep(5)  # accepts, and answers nothing for longer than a client waits in silence
        if req.path == "/v1/tx" and req.method == "POST" and self.mode in SUBMISSION_LIES:
            return web.json_response(*SUBMISSION_LIES[self.mode])  # the transaction goes nowhere
        if req.path.startswith("/v1/tx/") and self.mode in STATUS_LIES:
            return web.json_response(STATUS_LIES[self.mode])
        if self.mode == "hide_data" and req.path.startswith("/v1/patients/") and req.path.endswith("/data"):
            return web.json_response({"patient": req.path.split("/")[3], "data": []})  # "I hold none of them"
        async with self.session.request(req.method, self.upstream + req.path_qs, data=body,
                                        headers={k: v for k, v in req.headers.items() if k.lower() != "host"}) as r:
            out, status, ctype = await r.read(), r.status, r.content_type
        if self.mode == "tx_code" and req.path.startswith("/v1/tx/") and status == 200:
            st = json.loads(out)
            st["code"] = 1 - st.get("code", 0)  # "your write failed" (or "it was applied")
            out = json.dumps(st).encode()
        if self.mode == "head" and req.path == "/v1/head" and status == 200:
            st = json.loads(out)
            st["height"] = 10**6  # "the chain is far ahead of what the others serve"
            out = json.dumps(st).encode()
        if req.path == "/v1/proofs" and status == 200:
            out = self.rewrite(body, out)
        if self.mode == "blob" and req.method == "GET" and req.path.startswith("/v1/blobs/") and status == 200:
            out = self.forged_blob
        if self.mode == "upload_cid" and req.method == "POST" and req.path == "/v1/blobs" and status < 300:
            out = json.dumps({"cid": self.forged_cid}).encode()
        return web.Response(body=out, status=status, content_type=ctype)

    def rewrite(self, req_body: bytes, raw: bytes) -> bytes:
        if self.mode == "record":
            self.recorded.setdefault(req_body, raw)
        if self.mode == "replay" and req_body in self.recorded:
            return self.recorded[req_body]  # valid proofs, certified header: only old
        ks = decode(req_body)
        hdr, cert, cv, ents = decode(raw)
        for k, ent in zip(ks, ents, strict=True):
            v = ent[0]
            if self.mode == "x25519" and k[:1] == b"p" and v is not None:
                p = decode(v)
                p[3] = MALLORY.box_public
                ent[0] = encode(p)
            elif self.mode == "epoch" and k[:1] == b"e":
                ent[0] = None  # "this type was never rotated": epoch 0
            elif self.mode == "drop_audit" and k[:1] == b"A" and v is not None:
                ent[0] = encode(decode(v) - 1)
            elif self.mode == "forge_audit" and k[:1] == b"a" and v is not None:
                e = decode(v)
                e[0] = MALLORY.address  # someone else read it, or it was allowed
                ent[0] = encode(e)
            elif self.mode == "forge_grant" and k[:1] == b"h" and v is not None:
                ent[0] = MALLORY.address  # Mallory holds a grant: the phone would re-seal keys to her
            elif self.mode == "sealed" and k[:1] == b"k" and v is not None:
                ent[0] = seal.seal(MALLORY.box_public, bytes(32))
        if self.mode == "forged_header":
            from node.block import Header
            h = Header.decode(hdr)
            hdr = Header(h.chain_id, h.height, h.prev_hash, h.view, h.seq, h.time_ms, h.tx_root, bytes(32),
                         h.proposer).encode()
        return encode([hdr, cert, cv, ents])


async def _cli(*args: str) -> tuple[str, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "node.cli", *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 120)
    assert p.returncode == 0, err.decode()
    return out.decode(), err.decode()


def _named(reader: VerifiedReader, url: str, what: str) -> None:
    said = [str(r) for r in reader.refused]
    assert any(r.url == url and what in r.reason for r in reader.refused), said  # the liar is named
    assert url in str(next(r for r in reader.refused if r.url == url))
    # an honest validator is only ever passed over for being a block behind the others
    assert all(r.url == url or r.reason.startswith("stale header") for r in reader.refused), said


def _with_a_liar(tmp_path, body) -> None:
    """Run `body(proxy, nodes, vals, chain, honest)` on a real devnet with a LyingProxy before validator 0
    (`honest`: the other validators' URLs)."""
    with running_network(tmp_path) as nodes:
        genesis = Genesis.load(nodes[0].home / "genesis.json")

        async def go():
            proxy = LyingProxy(nodes[0].url)
            await proxy.start()
            try:
                await body(proxy, nodes, genesis.validator_keys, genesis.chain_id, [n.url for n in nodes[1:]])
            finally:
                await proxy.stop()
        run(go())


def test_every_client_refuses_a_lying_validator(tmp_path):
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(nodes[1].url) as c:
            def reader(**kw) -> VerifiedReader:
                return VerifiedReader([proxy.url, *honest], chain, vals, session=c.session, **kw)

            pat, doc = Identity.from_seed(b"patient"), Identity.from_seed(b"doctor")
            nurse = Identity.from_seed(b"nurse")
            await Staff(doc, c, chain).register("Dr D", "physician", "H")
            await Staff(nurse, c, chain).register("N", "nurse", "H")
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=1).frames_between(now - 60_000, now))

            # 1. swapped X25519 key: the phone seals the data key to the doctor's real key
            proxy.mode = "x25519"
            r = reader()
            phone = Phone(pat, c, chain, vals, reader=r, record=tmp_path / "pat.record.json")
            await phone.grant(doc.address, ["heart_rate"])
            _named(r, proxy.url, "does not lead to the certified state root")
            await phone.write_window("heart_rate", frames)
            sr = reader()
            staff = Staff(doc, c, chain, reader=sr, validators=vals)
            assert (await staff.read(pat.address, "heart_rate"))[0].readings == frames

            # 2. a tampered sealed key: the staff client refuses it and decrypts with the real one
            proxy.mode = "sealed"
            sr = reader()
            staff = Staff(doc, c, chain, reader=sr, validators=vals)
            assert (await staff.read(pat.address, "heart_rate"))[0].readings == frames
            _named(sr, proxy.url, "proof")

            # 3. forged grant (Mallory among the grantees): the phone does not believe it
            proxy.mode = "forge_grant"
            r = reader()
            phone = Phone(pat, c, chain, vals, reader=r, record=tmp_path / "pat.record.json")
            gs = (await phone.reads.grants(pat.address))["grants"]
            assert [g["staff"] for g in gs] == [doc.address.hex()]
            _named(r, proxy.url, "proof")

            # record an honest answer to the account read (before the revoke), for replay
            proxy.mode = "record"
            await reader().account(pat.address)

            # the doctor reads (audit entry), then the patient revokes: heart rate -> epoch 1
            await staff.read(pat.address, "heart_rate")
            await phone.revoke(doc.address)
            assert phone.epochs[HR] == 1 and phone.own_epochs[HR] == 1

            # 4. lower epoch by rewriting: refused; the next window is sealed under epoch 1
            proxy.mode = "epoch"
            r = reader()
            phone = Phone(pat, c, chain, vals, reader=r, record=tmp_path / "pat.record.json")
            res = await phone.write_window("heart_rate", frames)
            assert res.epoch == 1
            _named(r, proxy.url, "proof")

            # 5. stale header: the recorded pre-revoke answer (valid proofs, old block), to a
            # fresh phone process whose only memory is its own record file
            proxy.mode = "replay"
            r = reader()
            phone = Phone(pat, c, chain, vals, reader=r, record=tmp_path / "pat.record.json")
            await phone.sync()
            assert phone.epochs[HR] == 1
            _named(r, proxy.url, "stale header")
            # ...and a reader that has seen nothing refuses it: f+1 validators report a newer head
            r = reader()
            assert (await r.account(pat.address))["epochs"]["heart_rate"] == 1
            _named(r, proxy.url, "stale header")
            # ...and with no record at all, a phone that committed after that block refuses it too
            r = reader()
            phone = Phone(pat, c, chain, vals, reader=r)
            await phone.confirm(res.txid)
            await phone.sync()
            assert phone.epochs[HR] == 1
            _named(r, proxy.url, "stale header")

            # 6. dropped and forged audit entries: the patient sees exactly the committed reads
            truth = (await VerifiedReader(honest, chain, vals, session=c.session).audit(pat.address))["reads"]
            assert len(truth) == 3 and all(e["reader"] == doc.address.hex() for e in truth)
            for mode in ("drop_audit", "forge_audit"):
                proxy.mode = mode
                r = reader()
                phone = Phone(pat, c, chain, vals, reader=r)
                assert await phone.audit() == truth
                _named(r, proxy.url, "proof")

            # the command-line clients (genesis.json beside the key file: verifying by default)
            kdir = tmp_path / "cli"
            kdir.mkdir()
            pat.save(kdir / "pat.json")
            doc.save(kdir / "doc.json")
            (kdir / "genesis.json").write_text((nodes[0].home / "genesis.json").read_text())
            proxy.mode = "forge_audit"
            out, err = await _cli("patient", "audit", "--key", str(kdir / "pat.json"), "--node", proxy.url,
                                  "--json")
            assert [r["reader"] for r in json.loads(out)["reads"]] == [doc.address.hex()] * 3
            assert f"validator {proxy.url} lied or is stale" in err
            proxy.mode = "sealed"
            await phone.grant(doc.address, ["heart_rate"])
            out, err = await _cli("staff", "read", pat.address.hex(), "--type", "heart_rate", "--key",
                                  str(kdir / "doc.json"), "--node", proxy.url, "--json")
            assert len(json.loads(out)["readings"]) == 2 * len(frames)
            assert f"validator {proxy.url} lied or is stale" in err

            # 7. a forged header (another state root under the real certificate)
            proxy.mode = "forged_header"
            r = reader()
            assert (await r.account(pat.address))["epochs"]["heart_rate"] == 1
            _named(r, proxy.url, "certificate")

            # 8. with only the liar to ask, the client refuses outright, naming it: first because one
            # validator cannot show that its state is the current one (f+1 must report their heights;
            # before, the check was skipped and any certified old state taken), then for the lie itself
            proxy.mode = "x25519"
            alone = VerifiedReader([proxy.url], chain, vals)
            with pytest.raises(NoHonestAnswer, match=rf"1 distinct validators of those asked \({proxy.url}\) reported"):
                await alone.account(doc.address)
            # ...and so with the same validator at two addresses: its signed head heights count once
            # (counted by address, the liar passed for f+1 and the second address answered)
            twin = LyingProxy(nodes[0].url)
            await twin.start()
            try:
                two = VerifiedReader([proxy.url, twin.url], chain, vals)
                with pytest.raises(NoHonestAnswer, match="1 distinct validators"):
                    await two.account(doc.address)
                await two.close()
            finally:
                await twin.stop()
            # a head height rewritten on its way (or signed by a key outside the genesis) is not counted
            proxy.mode = "head"
            r = VerifiedReader([proxy.url, *honest[:1]], chain, vals)
            with pytest.raises(NoHonestAnswer, match="1 distinct validators"):
                await r.account(doc.address)
            r = VerifiedReader([proxy.url, *honest], chain, vals)
            assert (await r.account(pat.address))["epochs"]["heart_rate"] == 1
            assert r.min_height < 10**6
            await r.close()
            proxy.mode = "x25519"
            alone._fresh = True  # as if f+1 had reported their heights
            with pytest.raises(NoHonestAnswer, match=f"{proxy.url} lied or is stale: .*certified state root"):
                await alone.account(doc.address)
            await alone.close()

            # 9. a commit claimed with another transaction's certified answer (valid header,
            # certificate and path, for the other one): the phone refuses it; it checks the
            # honest answer from that answer alone, with no block download
            proxy.mode = "honest"
            phone = Phone(pat, c, chain, vals)
            decoy = await phone.write_window("heart_rate", frames)
            res = await phone.write_window("heart_rate", frames, wait=False)
            async with NodeClient(proxy.url) as pc:
                proxy.decoy = json.dumps(await pc.wait_committed(decoy.txid, 30)).encode()
                proxy.mode = "tx_decoy"
                with pytest.raises(ProofError, match="Merkle"):
                    await wait_proven(pc, res.txid, 30, vals, chain, None)
                proxy.mode = "tx_code"  # the right commit, the wrong result code
                with pytest.raises(ProofError, match="receipt"):
                    await wait_proven(pc, res.txid, 30, vals, chain, None)
                proxy.mode, proxy.paths = "honest", []
                assert (await wait_proven(pc, res.txid, 30, vals, chain, None))["status"] == "committed"
                assert not [p for p in proxy.paths if p.startswith("/v1/blocks")], proxy.paths
    _with_a_liar(tmp_path, body)


def test_blob_bytes_and_upload_cids_are_checked_against_the_cid(tmp_path):
    """A validator colluding with someone who holds a data key (a revoked clinician) serves another
    ciphertext for a window, sealed under the same key and window: AES-GCM alone accepts it, so the
    staff client and the patient check the bytes against the CID, and fetch from an honest validator.
    A validator that answers a standalone upload with another CID is refused before the write is signed."""
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(proxy.url) as pc, NodeClient(nodes[1].url) as c:
            def reader() -> VerifiedReader:
                return VerifiedReader([proxy.url, *honest], chain, vals, session=c.session)

            pat, doc = Identity.from_seed(b"blob patient"), Identity.from_seed(b"blob doctor")
            await Staff(doc, c, chain).register("Dr B", "physician", "H")
            phone = Phone(pat, pc, chain, vals, reader=reader())
            await phone.grant(doc.address, ["heart_rate"])
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=2).frames_between(now - 60_000, now))
            res = await phone.write_window("heart_rate", frames)
            rec = (await reader().data(pat.address))["data"][0]
            fake = [(t, k, b"\x00\xfe") for t, k, _ in frames]  # heart rate 254: what the colluder would show
            key = envelope.data_key(envelope.master_secret(pat.secret, chain), HR, res.epoch)
            ad = envelope.aad(chain, pat.address, HR, res.epoch, rec["t_start_ms"], rec["t_end_ms"])
            proxy.forged_blob = envelope.seal_window(key, ad, fake)
            assert envelope.open_window(key, ad, proxy.forged_blob) == fake  # AES-GCM takes it
            proxy.mode, proxy.paths = "blob", []
            staff = Staff(doc, pc, chain, reader=reader(), validators=vals)
            assert (await staff.read(pat.address, "heart_rate"))[0].readings == frames
            assert await phone.read_own("heart_rate") == frames
            assert len([p for p in proxy.paths if p.startswith("/v1/blobs/")]) == 2  # asked, and passed over
            with pytest.raises(BlobMismatch, match=f"{proxy.url} answered .* not blob {res.cid}"):
                await pc.download(pat, chain, res.cid, Cid.parse(res.cid).to_bytes())
            alone = Staff(doc, pc, chain)  # no other validator to ask: refused, not decrypted
            with pytest.raises(BlobMismatch):
                await alone.read(pat.address, "heart_rate")

            # a window over 1 MiB is a standalone upload: the CID answered is checked
            proxy.mode, proxy.forged_cid = "upload_cid", str(cid_v1_raw(b"the colluder's bytes"))
            big = Phone(pat, pc, chain, vals, reader=reader(), pad_to=(1 << 20) + 4096)
            with pytest.raises(BlobMismatch, match=f"stored the upload as {proxy.forged_cid}"):
                await big.write_window("heart_rate", frames)
            proxy.mode = "honest"
            big = Phone(pat, pc, chain, vals, reader=reader(), pad_to=(1 << 20) + 4096)
            assert (await big.write_window("heart_rate", frames)).size > 1 << 20
    _with_a_liar(tmp_path, body)


def test_validator_refuses_to_serve_rewritten_state(tmp_path):
    with running_network(tmp_path, n=1, clean_logs=False) as nodes:
        node = nodes[0]
        genesis = Genesis.load(node.home / "genesis.json")

        async def go():
            async with NodeClient(node.url) as c:
                pat, doc = Identity.from_seed(b"patient"), Identity.from_seed(b"doctor")
                await Staff(doc, c, genesis.chain_id).register("Dr D", "physician", "H")
                await Phone(pat, c, genesis.chain_id, genesis.validator_keys).grant(doc.address, ["heart_rate"])
                return pat, doc
        pat, doc = run(go())
        node.stop()
        env = lmdb.open(str(node.home / "ledger"), max_dbs=8, map_size=1 << 36)
        db = env.open_db(b"state")
        with env.begin(write=True, db=db) as txn:
            k = keys.grant(pat.address, doc.address)
            g = decode(txn.get(k))
            g[0] = sorted(DATA_TYPES.values())  # every data type
            txn.put(k, encode(g))
        env.close()
        with pytest.raises(RuntimeError, match="exited"):
            node.start(timeout=20)
        assert node.proc.returncode != 0
        tail = node.log_tail(5000)
        assert "stored state does not match the certified state root: refusing to serve" in tail


def test_read_routes_carry_proofs(node, genesis, monkeypatch):
    """`?proof=1` on every JSON read route: the bundle verifies against the certified header and
    its values are the ones the JSON shows."""
    from node.proof import check_bundle

    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"patient"), Identity.from_seed(b"doctor")
            staff = Staff(doc, c, genesis.chain_id)
            await staff.register("Dr D", "physician", "H")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            await phone.grant(doc.address, ["heart_rate"])
            now = int(time.time() * 1000)
            await phone.write_window("heart_rate", list(make_wearable("heart_rate", "hr", seed=2).frames_between(now - 60_000, now)))
            await staff.read(pat.address, "heart_rate")
            p = pat.address.hex()
            routes = [f"/v1/accounts/{doc.address.hex()}", f"/v1/patients/{p}/audit", f"/v1/patients/{p}/grants",
                      f"/v1/patients/{p}/keys/{doc.address.hex()}", f"/v1/patients/{p}/data"]
            for route in routes:
                out = await c.get_json(route, proof="1")
                ks = [bytes.fromhex(k) for k in out["proof_keys"]]
                header, values = check_bundle(bytes.fromhex(out["proof"]), ks, genesis.chain_id,
                                              genesis.validator_keys, 0)
                assert header.height >= 1 and values, route
                if "accounts" not in route:  # lists and records: every proven key is present ...
                    absent = {k for k, v in values.items() if v is None}
                    # ... but for the emergency index of a log without break-glass reads: proven absent
                    assert absent == ({keys.emergency_count(pat.address)} if "audit" in route else set()), route
            acct = await c.get_json(f"/v1/accounts/{doc.address.hex()}", proof="1")
            _, values = check_bundle(bytes.fromhex(acct["proof"]), [bytes.fromhex(k) for k in acct["proof_keys"]],
                                     genesis.chain_id, genesis.validator_keys, 0)
            assert decode(values[keys.profile(doc.address)])[3].hex() == acct["profile"]["x25519_public"]
            audit = await c.get_json(f"/v1/patients/{p}/audit", proof="1")
            _, values = check_bundle(bytes.fromhex(audit["proof"]), [bytes.fromhex(k) for k in audit["proof_keys"]],
                                     genesis.chain_id, genesis.validator_keys, 0)
            assert decode(values[keys.audit_count(pat.address)]) == len(audit["reads"]) == 1
            # any single corrupted byte of a real bundle: refused (ValueError) or the same values
            import random
            raw, ks = bytes.fromhex(audit["proof"]), [bytes.fromhex(k) for k in audit["proof_keys"]]
            rnd = random.Random(15)
            for _ in range(300):
                bad = bytearray(raw)
                bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
                try:
                    _, got = check_bundle(bytes(bad), ks, genesis.chain_id, genesis.validator_keys, 0)
                except ValueError:
                    continue
                assert got == values
            # the verifying reader gives the routes' JSON, also when lists come in many requests
            from devices.patient import verified_reads
            monkeypatch.setattr(verified_reads, "CHUNK", 1)
            r = VerifiedReader([node.url], genesis.chain_id, genesis.validator_keys, session=c.session)
            for name in ("audit", "grants", "data"):
                assert await getattr(r, name)(pat.address) == await getattr(c, name)(pat.address), name
            assert await r.sealed_keys(pat.address, doc.address) == await c.sealed_keys(pat.address, doc.address)
            mine, theirs = await r.account(doc.address), await c.account(doc.address)
            assert mine["profile"] == theirs["profile"] and mine["epochs"] == theirs["epochs"]
            assert not r.refused
    run(go())


def test_proofs_route_refuses_bad_requests(node, genesis):
    async def go():
        async with aiohttp.ClientSession() as s:
            async def post(body: bytes) -> tuple[int, str]:
                async with s.post(node.url + "/v1/proofs", data=body) as r:
                    return r.status, (await r.json())["error"] if r.status != 200 else ""
            assert (await post(encode([b"n" + bytes(32)])))[0] == 404  # no block committed yet
            for bad in (b"\xc1", encode([]), encode(b"x"), encode([1]), encode([b""]), encode([b"x" * 257]),
                        encode([b"k"] * 1025)):
                status, err = await post(bad)
                assert status == 400, (bad[:8], status, err)
    run(go())


def test_a_long_data_index_is_served_a_page_at_a_time_and_never_read_whole(node, genesis):
    """GET /v1/patients/{p}/data runs on the event loop that runs consensus: it answers at most 1,000
    entries a page (a cursor, `next`, for the rest), and `?proof=1` over a list too long to prove in
    one answer says so without reading it (before, every entry and its record was read, and a patient
    with 20,000 writes made each request hold the loop ~0.4 s: a few a second forced view changes)."""
    async def go():
        async with NodeClient(node.url) as c:
            chain, pat = genesis.chain_id, Identity.from_seed(b"long index patient")
            now = int(time.time() * 1000)
            blobs = [b"%05d" % k * 13 for k in range(1100)]
            bodies = [Write(HR, cid_v1_raw(b).to_bytes(), len(b), 0, now + 10 * k, now + 10 * k + 5)
                      for k, b in enumerate(blobs)]
            txs = Tx.build_batch(pat, chain, 1, bodies)
            for k in range(0, len(txs), 500):
                res = await c.submit_many([(t.raw, b) for t, b in zip(txs[k:k + 500], blobs[k:k + 500], strict=True)])
                assert all(r["status"] == 202 for r in res), [r for r in res if r["status"] != 202][:3]
                last = txs[min(k + 500, len(txs)) - 1]  # at most 1,024 pending per sender
                assert (await c.wait_committed(last.id.hex(), 60))["code"] == 0
            path = f"/v1/patients/{pat.address.hex()}/data"
            first = await c.get_json(path)
            assert len(first["data"]) == 1000 and first["next"]
            rest = await c.get_json(path, after=first["next"])
            assert len(rest["data"]) == 100 and rest["next"] is None
            cids = [d["cid"] for d in first["data"] + rest["data"]]
            assert sorted(cids) == sorted(str(cid_v1_raw(b)) for b in blobs) and len(set(cids)) == 1100
            assert [d["cid"] for d in (await c.data(pat.address))["data"]] == cids  # the client follows `next`
            small = await c.get_json(path, limit=300, after=first["next"])
            assert len(small["data"]) == 100 and small["next"] is None
            assert len((await c.get_json(path, limit=5000))["data"]) == 1000  # the page is capped
            proved = await c.get_json(path, proof=1, limit=1)
            assert proved["proof"] is None and proved["proof_keys"] is None
            assert proved["proof_error"].startswith("2201 keys: fetch them from POST /v1/proofs")
            for bad, why in (("zz", "after must be the hex cursor"), ("00" * 10, "not a cursor of this patient")):
                with pytest.raises(ApiError, match=why):
                    await c.get_json(path, after=bad)
            reader = VerifiedReader([node.url], chain, genesis.validator_keys, session=c.session)
            assert len((await reader.data(pat.address))["data"]) == 1100  # proven, in requests of 1,024 keys
    run(go())


def test_grants_and_sealed_keys_are_served_a_page_at_a_time(node, genesis):
    """GET /v1/patients/{p}/grants and /keys/{staff} scanned up to 10,000 entries on the event loop
    and cut the list there without a word (a patient can hold tens of thousands of either: a review).
    Both page like /data now: at most 1,000 a page (`?limit=` fewer), `next` the cursor for `?after=`;
    the client reads every page."""
    async def go():
        async with NodeClient(node.url) as c:
            chain, vals = genesis.chain_id, genesis.validator_keys
            pat = Identity.from_seed(b"paged patient")
            phone = Phone(pat, c, chain, vals, reader=VerifiedReader([node.url], chain, vals, session=c.session))
            docs = [Identity.from_seed(b"paged doctor %d" % k) for k in range(3)]
            for k, doc in enumerate(docs):
                await Staff(doc, c, chain).register(f"Dr P{k}", "physician", "H")
                await phone.grant(doc.address, ["heart_rate", "spo2", "glucose"])
            path = f"/v1/patients/{pat.address.hex()}/grants"
            first = await c.get_json(path, limit=2)
            assert len(first["grants"]) == 2 and first["next"]
            rest = await c.get_json(path, limit=2, after=first["next"])
            assert len(rest["grants"]) == 1 and rest["next"] is None
            staff = [g["staff"] for g in first["grants"] + rest["grants"]]
            assert sorted(staff) == sorted(d.address.hex() for d in docs) and staff == sorted(staff)
            assert [g["staff"] for g in (await c.grants(pat.address))["grants"]] == staff  # every page
            kpath = f"/v1/patients/{pat.address.hex()}/keys/{docs[0].address.hex()}"
            one = await c.get_json(kpath, limit=2)
            two = await c.get_json(kpath, limit=2, after=one["next"])
            assert len(one["keys"]) == 2 and len(two["keys"]) == 1 and two["next"] is None
            assert (await c.sealed_keys(pat.address, docs[0].address))["keys"] == one["keys"] + two["keys"]
            assert {k["type"] for k in one["keys"] + two["keys"]} == {"heart_rate", "spo2", "glucose"}
            for bad, why in (("zz", "after must be the hex cursor"), ("00" * 10, "not a cursor of this patient")):
                with pytest.raises(ApiError, match=why):
                    await c.get_json(kpath, after=bad)
    run(go())


class _HeadOnly:
    """A validator's HTTP face that signs its head height (`GET /v1/head`, with its real genesis key)
    and answers `POST /v1/proofs` with `proofs_status` and nothing to check."""

    def __init__(self, ident: Identity, chain: str, height: int, proofs_status: int) -> None:
        self.ident, self.chain, self.height, self.proofs_status = ident, chain, height, proofs_status
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from node.tx.requests import head_digest

        async def head(req: web.Request) -> web.Response:
            nonce = bytes.fromhex(req.query["nonce"])
            me = self.ident.public_key
            sig = self.ident.sign(head_digest(self.chain, me, nonce, self.height))
            return web.json_response({"height": self.height, "validator": me.hex(), "nonce": nonce.hex(),
                                      "signature": sig.hex()})

        async def proofs(req: web.Request) -> web.Response:
            return web.json_response({"error": "no block is committed yet"}, status=self.proofs_status)
        app = web.Application()
        app.router.add_get("/v1/head", head)
        app.router.add_post("/v1/proofs", proofs)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


def test_a_chain_at_its_genesis_reads_as_the_empty_state_only_when_its_validators_sign_height_0():
    """At height 0 no block certifies a state, and the state is the genesis state: empty (a staff member
    registering on a new network reads its nonce so). The reader takes it only when a quorum (2f+1) of
    genesis validators sign a head of 0 over its nonce and none a higher one: a lying validator
    answering "no block yet" while another signs height 5, or beside one other at 0 (an honest one
    wiped and catching up), gets no answer taken."""
    ids = [Identity.from_seed(b"genesis-reader-%d" % i) for i in range(4)]
    vals = [i.public_key for i in ids]
    addr = MALLORY.address

    async def go() -> None:
        fresh = [_HeadOnly(ids[k], "gen-chain", 0, 404) for k in range(3)]  # a quorum of 4 at height 0
        liar_and_ahead = [_HeadOnly(ids[0], "gen-chain", 0, 404), _HeadOnly(ids[1], "gen-chain", 0, 404),
                          _HeadOnly(ids[2], "gen-chain", 5, 503)]
        # f+1 at 0, the others unreachable: a liar and an honest validator wiped and catching up say so too
        liar_and_wiped = [_HeadOnly(ids[0], "gen-chain", 0, 404), _HeadOnly(ids[1], "gen-chain", 0, 404)]
        servers = (*fresh, *liar_and_ahead, *liar_and_wiped)
        for s in servers:
            await s.start()
        try:
            async with aiohttp.ClientSession() as session:
                r = VerifiedReader([s.url for s in fresh], "gen-chain", vals, session=session, wait_s=0.5)
                acct = await r.account(addr)
                assert acct["next_nonce"] == 1 and acct["profile"] is None and r.min_height == 0
                with pytest.raises(NoHonestAnswer, match="below the owner's own record"):  # a later state
                    await r.account(addr, min_epochs={HR: 1})
                for group in (liar_and_ahead, liar_and_wiped):
                    r = VerifiedReader([s.url for s in group], "gen-chain", vals, session=session, wait_s=0.5)
                    with pytest.raises(NoHonestAnswer):
                        await r.account(addr)
        finally:
            for s in servers:
                await s.runner.cleanup()
    run(go())


def test_one_validator_s_refusal_or_unproven_answer_decides_nothing(tmp_path):
    """A client with the genesis keys takes only a proven commit from its validator: a "rejected"
    without a proof, a refusal (a clinician told the patient opted out of emergency reads), a
    status with no status, or another transaction's commit given for ours sends the same signed
    bytes to the others, and it commits there. A submission 2f+1 validators refuse is refused, with
    their reason, without waiting out the failover."""
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(proxy.url) as pc, NodeClient(nodes[1].url) as c:
            truth = VerifiedReader(honest, chain, vals, session=c.session)
            pat, doc = Identity.from_seed(b"refused patient"), Identity.from_seed(b"refused doctor")
            await Staff(doc, c, chain).register("Dr R", "physician", "H")
            both = [proxy.url, *honest]
            phone = Phone(pat, pc, chain, vals, reader=VerifiedReader(both, chain, vals, session=c.session))

            proxy.mode = "reject_tx"  # the grant dropped and said rejected
            await phone.grant(doc.address, ["heart_rate"])
            assert [g["staff"] for g in (await truth.grants(pat.address))["grants"]] == [doc.address.hex()]

            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=3).frames_between(now - 60_000, now))
            proxy.mode = "malformed_tx"  # a status without one: a KeyError ended the write
            first = await phone.write_window("heart_rate", frames)
            async with NodeClient(nodes[1].url) as hc:
                proxy.decoy = json.dumps(await hc.wait_committed(first.txid, 30)).encode()
            proxy.mode, proxy.swallow = "tx_decoy", True  # the first write's commit given for the second
            second = await phone.write_window("heart_rate", frames[:-1])
            assert {r["cid"] for r in (await truth.data(pat.address))["data"]} == {first.cid, second.cid}

            proxy.mode = "refuse_tx"  # "the patient opted out": the read commits through the others
            staff = Staff(doc, pc, chain, reader=VerifiedReader(both, chain, vals, session=c.session), validators=vals)
            assert {len(w.readings) for w in await staff.read(pat.address, "heart_rate")} == \
                {len(frames), len(frames) - 1}
            assert len((await truth.audit(pat.address))["reads"]) == 1

            # refused by 2f+1 (the client's own validator and two others; the fourth is down): an old
            # nonce, signed again. Raised as their refusal at once, not a "pending" when the failover ran out
            nodes[3].stop()
            proxy.mode, proxy.paths = "honest", []
            phone.next_nonce = 1
            with pytest.raises(ApiError, match="stale nonce"):
                await phone.set_break_glass(False)
            assert (await truth.account(pat.address))["break_glass"] is True
            assert phone.next_nonce is None  # synced again before the next one
    _with_a_liar(tmp_path, body)


def _phone_behind(proxy, pc: NodeClient, vals, chain: str, honest: list[str], seed: bytes):
    """A patient's phone whose validator is the proxy (its reader asks every validator), and a reader
    of the honest validators alone to check what committed."""
    pat = Identity.from_seed(seed)
    phone = Phone(pat, pc, chain, vals, reader=VerifiedReader([proxy.url, *honest], chain, vals, session=pc.session))
    return pat, phone, VerifiedReader(honest, chain, vals, session=pc.session)


def test_validators_down_when_a_transaction_failed_over_get_it_once_they_are_back(tmp_path):
    """The client's validator drops a transaction ("rejected", no proof) while every other one is
    down: the failover's first sends all fail. It sends the same bytes again to each that comes back
    (before, it only asked them for a status they did not have until the deadline: "pending")."""
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(proxy.url) as pc:
            pat, phone, truth = _phone_behind(proxy, pc, vals, chain, honest, b"resent patient")
            await phone.sync()
            for n in nodes[1:]:
                n.stop()
            proxy.mode = "reject_tx"

            async def back() -> None:
                await asyncio.sleep(3)  # after the failover's first round of sends failed
                for n in nodes[1:]:
                    n.launch()
                await asyncio.gather(*(asyncio.to_thread(n.wait_ready) for n in nodes[1:]))
            returning = asyncio.create_task(back())
            try:
                await phone.set_break_glass(False)
            finally:
                await returning
            assert (await truth.account(pat.address))["break_glass"] is False
    _with_a_liar(tmp_path, body)


def test_a_validator_that_never_answers_a_proof_request_costs_a_silence_once_then_is_asked_last(tmp_path,
                                                                                                 monkeypatch):
    """Listed first, a validator that takes proof requests and never answers held every read for the
    session's whole timeout (60 s for the CLI's), at every fetch and every chunk. An ask now ends after
    ASK_SILENCE_S without a byte, and a validator that failed or lied is asked after the others."""
    import devices.patient.verified_reads as vr
    monkeypatch.setattr(vr, "ASK_SILENCE_S", 1.0)

    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(honest[0]) as c:
            pat = Identity.from_seed(b"hung patient")
            phone = Phone(pat, c, chain, vals, reader=VerifiedReader(honest, chain, vals, session=c.session))
            await phone.set_break_glass(False)  # a block: the chain is past its genesis
            proxy.mode = "hang_proofs"
            reader = VerifiedReader([proxy.url, *honest], chain, vals, session=c.session)
            for _ in range(3):
                acct = await asyncio.wait_for(reader.account(pat.address), 20)
                assert acct["address"] == pat.address.hex() and acct["break_glass"] is False
            assert proxy.paths.count("/v1/proofs") == 1  # asked once, then after the others
    _with_a_liar(tmp_path, body)


def test_the_fleet_check_counts_records_by_proof_not_by_one_validator_s_list(tmp_path):
    """The fleet's closing check counted each patient's records from the list its phone's validator
    gave: one listing none made committed writes look lost (or one listing them hid a loss). With
    the genesis, the records are proven against a certified state, and that list decides nothing."""
    from devices.load.fleet_check import run_fleet
    from devices.load.fleet_model import FleetConfig

    async def body(proxy, nodes, vals, chain, honest):
        proxy.mode = "hide_data"
        cfg = FleetConfig(wearables=16, phones=4, seconds=3, rate=8, staff=1, linger_ms=20, drain_timeout=60)
        res = await run_fleet([proxy.url, *honest], cfg, check_sample=1, genesis=Genesis.load(nodes[0].home /
                                                                                              "genesis.json"))
        chk = res["check"]
        assert chk["writes_committed"] > 0 and chk["writes_missing_on_chain"] == 0, chk
        assert chk["readings_lost"] == 0 and chk["sampled_windows_mismatched"] == 0, chk
    _with_a_liar(tmp_path, body)


def test_a_key_is_sealed_only_to_a_staff_member_s_key_as_of_now(tmp_path):
    """A long-lived reader took any certified state at or above the last height it saw: a validator
    replaying the state from before a staff member replaced a (compromised) X25519 key had the
    phone seal data keys to the old one. Before sealing, the reader asks again how far f+1
    validators have got, and the old state is refused as stale."""
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(nodes[1].url) as c:
            pat, doc = Identity.from_seed(b"fresh-key patient"), Identity.from_seed(b"fresh-key doctor")
            old = Staff(doc, c, chain)
            await old._send(Profile("Dr F", "physician", "H", MALLORY.box_public))  # the key since compromised
            r = VerifiedReader([proxy.url, *honest], chain, vals, session=c.session)
            proxy.mode = "record"  # what the phone's reads get while the old key is current
            await r.account(pat.address)
            await r.grants(pat.address)
            await r.account(doc.address)
            await Staff(doc, c, chain).register("Dr F", "physician", "H")  # the key replaced
            proxy.mode = "replay"
            phone = Phone(pat, c, chain, vals, reader=r)
            await phone.grant(doc.address, ["heart_rate"])
            _named(r, proxy.url, "stale header")
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=8).frames_between(now - 60_000, now))
            await phone.write_window("heart_rate", frames)
            proxy.mode = "honest"
            staff = Staff(doc, c, chain, reader=VerifiedReader(honest, chain, vals, session=c.session), validators=vals)
            assert [w.readings for w in await staff.read(pat.address, "heart_rate")] == [frames]
    _with_a_liar(tmp_path, body)


def test_a_large_write_its_validator_never_forwarded_commits_through_the_others(tmp_path):
    """A window too large to ride as a sidecar is uploaded to the phone's validator alone; that
    validator takes the write and forwards nothing (it died, or lies). The failover's same signed
    bytes got 422 "blob not held" from every other validator, and the phone gave up on a write they
    would have taken (a crash-consistency review): now each that says so gets the blob, then the
    write, once."""
    async def body(proxy, nodes, vals, chain, honest):
        async with NodeClient(proxy.url) as pc:
            pat, phone, truth = _phone_behind(proxy, pc, vals, chain, honest, b"large-window patient")
            await phone.set_break_glass(True)  # a committed transaction: the account may upload
            phone.pad_to = SIDECAR_MAX + 4096  # every window is then uploaded, not a sidecar
            now = int(time.time() * 1000)
            frames = list(make_wearable("heart_rate", "hr", seed=5).frames_between(now - 60_000, now))
            proxy.mode = "reject_tx"  # the write is taken and dropped; the upload went through to validator 0
            big = await phone.write_window("heart_rate", frames)
            assert big.size > SIDECAR_MAX
            assert big.cid in {r["cid"] for r in (await truth.data(pat.address))["data"]}
            assert "/v1/blobs" in proxy.paths  # uploaded to its own validator first
    _with_a_liar(tmp_path, body)
