"""docs/PROTOCOL.md's worked examples are the code's bytes: every labelled block is regenerated from
the same fixed seeds (devices/net/protocol_examples.py) and compared, and the examples are checked with
the independent decoders and verifiers (a second implementation would use the same checks)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from devices.net.localnet import dev_issuer
from devices.net.protocol_examples import CHAIN_ID, Msgpack, blocks, examples, render, seed_identity
from devices.patient import envelope
from node import merkle
from node.block import Block, Header, verify_cert
from node.crypto import seal
from node.crypto.keys import Identity
from node.genesis import Genesis, content_hash, load_checked
from node.ipfs.cid import Cid
from node.proof import check_bundle
from node.sidecar import check_sidecar, decode_submission
from node.state import smt
from node.tx import KIND_NAMES, Tx
from node.tx.credential import issue
from node.wire import decode_canonical

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


@pytest.fixture(scope="module")
def ex() -> dict:
    return examples()


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def _bytes(ex: dict, name: str) -> bytes:
    v = ex[name]
    return v.data if isinstance(v, Msgpack) else v


def test_every_labelled_block_matches_the_code(ex: dict, doc: str) -> None:
    found = blocks(doc)
    names = [n for _, n, _ in found]
    assert len(names) == len(set(names)), "an example is shown twice"
    assert not set(ex) - set(names), f"examples missing from the document: {sorted(set(ex) - set(names))}"
    assert not set(names) - set(ex), f"the document names unknown examples: {sorted(set(names) - set(ex))}"
    for kind, name, body in found:
        if kind == "hex":
            assert bytes.fromhex("".join(body.split())) == ex[name], name
        elif kind == "json":
            assert json.loads(body) == ex[name], name
        else:
            assert body == render(kind, ex[name]), f"{name}: regenerate with python -m devices.net.protocol_examples --write"


def test_hex_of_every_annotated_dump_is_the_encoding(ex: dict, doc: str) -> None:
    """The hex column of an annotated dump, read top to bottom, is the value's exact encoding."""
    for kind, name, body in blocks(doc):
        if kind == "msgpack":
            hexs = ""
            for ln in body.splitlines():
                for tok in ln.split():  # the leading hex tokens; the description starts with a word
                    if not re.fullmatch(r"(?:[0-9a-f]{2})+", tok):
                        break
                    hexs += tok
            assert bytes.fromhex(hexs) == _bytes(ex, name), name


def test_transactions_decode_verify_and_have_the_ids_shown(ex: dict) -> None:
    for name in ("profile", "grant", "policy", "write", "read", "break-glass-read", "release", "revoke"):
        tx = Tx.decode(_bytes(ex, f"tx/{name}/tx"), chain_id=CHAIN_ID)  # checks the signature too
        assert tx.payload == _bytes(ex, f"tx/{name}/payload")
        if f"tx/{name}/id" in ex:
            assert tx.id == ex[f"tx/{name}/id"] and tx.digest == ex[f"tx/{name}/digest"]
        assert KIND_NAMES[tx.kind] in name or name in ("break-glass-read", "revoke")
    assert _bytes(ex, "tx/break-glass-read/payload").endswith(bytes.fromhex("a6455452454154"))
    assert _bytes(ex, "tx/policy/payload").endswith(b"\xc3")


def test_blob_sealed_keys_and_sidecar(ex: dict) -> None:
    staff, patient = seed_identity("staff"), seed_identity("patient")
    assert seal.unseal(staff.box_secret, ex["blob/sealed-hr-0"]) == ex["blob/data-key-hr-0"]
    write = Tx.decode(_bytes(ex, "tx/write/tx"), CHAIN_ID)
    blob = ex["blob/blob"]
    ad = envelope.aad(CHAIN_ID, patient.address, write.body.dtype, write.body.epoch, write.body.t_start_ms,
                      write.body.t_end_ms)
    rows = envelope.open_window(ex["blob/data-key-hr-0"], ad, blob)
    assert all(isinstance(u, int) for _, u, _ in rows)  # gatt_uuid is an integer
    cid = Cid.from_bytes(write.body.cid)
    assert cid.codec_name == "raw" and str(cid) == ex["blob/cid-string"]["cid"]
    raw, side = decode_submission(_bytes(ex, "submit/tx-with-sidecar"), 1 << 21)
    assert raw == write.raw and side == blob and check_sidecar(write, side) is None
    items = decode_canonical(ex["submit/batch"], 1 << 21)
    assert items[1] == [write.raw, blob]


def test_block_certificate_and_inclusion_proof(ex: dict) -> None:
    validators = [seed_identity(f"validator-{i}").public_key for i in range(4)]
    block = Block.decode(ex["block/block-1"])
    assert block.header.encode() == _bytes(ex, "block/header-1") and block.hash == ex["block/hash-1"]
    assert verify_cert(block, validators) and block.check_tx_root()
    h = block.header
    assert h.seq == h.height and h.proposer == h.view % len(validators)
    st = ex["api/tx-committed"]
    write_id = ex["tx/write/id"]
    assert merkle.verify(write_id, st["index"], st["tx_count"], [bytes.fromhex(p) for p in st["proof"]], h.tx_root)
    assert st["block_hash"] == block.hash.hex()
    # the answer alone proves the commit: its header and certificate are the block's
    from node.proof import verify_status
    assert verify_status(write_id, st, validators, CHAIN_ID) == block.header


def test_state_root_replays_and_proofs_verify(ex: dict) -> None:
    state = {bytes.fromhex(k): bytes.fromhex(v) for k, v in ex["state/block1-writes"]}
    assert smt.naive_root(state) == ex["state/root-1"]
    state.update({k: v for k, v in decode_canonical(_bytes(ex, "state/block2-writes"), 1 << 20)})
    assert smt.naive_root(state) == ex["state/root-2"]
    header2 = Header.decode(ex["block/header-2"])
    assert header2.state_root == ex["state/root-2"] and header2.prev_hash == ex["block/hash-1"]
    k_in, k_out = ex["proof/member-key"], ex["proof/absent-key"]
    assert smt.verify(header2.state_root, k_in, state[k_in], smt.Proof.decode(_bytes(ex, "proof/member")))
    assert smt.verify(header2.state_root, k_out, None, smt.Proof.decode(_bytes(ex, "proof/absent")))
    validators = [seed_identity(f"validator-{i}").public_key for i in range(4)]
    hd, vals = check_bundle(ex["proof/bundle"], [k_in, k_out], CHAIN_ID, validators, 2)
    assert hd.height == 2 and vals == {k_in: state[k_in], k_out: None}


def test_key_file_and_genesis_json_load(ex: dict, tmp_path: Path) -> None:
    p = tmp_path / "patient.json"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(ex["keys/patient-file"], fh)
    assert Identity.load(p) == seed_identity("patient")
    g = tmp_path / "genesis.json"
    g.write_text(json.dumps(ex["api/genesis"]))
    assert Genesis.load(g).document() == ex["api/genesis"]
    assert load_checked(g).hash.hex() == ex["api/genesis"]["genesis_hash"]


# ---- docs/openapi.json against a running validator ----------------------------------------------

OPENAPI = DOC.parent / "openapi.json"


def test_openapi_document_is_valid_and_matches_the_routes() -> None:
    """Every route the API serves is in the schema, and the schema names no route the API lacks."""
    from jsonschema import Draft202012Validator

    spec = json.loads(OPENAPI.read_text())
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    from node.api.server import ROUTE_MODULES
    served = {(r.method.lower(), r.path) for m in ROUTE_MODULES for r in m.routes}
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert served == documented
    readme = (DOC.parent.parent / "README.md").read_text()
    table = {(m.lower(), re.sub(r"\{[^}]*\}", "{}", p)) for m, p in re.findall(r"^\| `(GET|POST) (/[^`\[]*)", readme, re.M)}
    assert table == {(m, re.sub(r"\{[^}]*\}", "{}", p)) for m, p in documented}  # README's route table: the same routes


class _Api:
    """Validates every JSON answer against its route's schema in docs/openapi.json."""

    def __init__(self, url: str) -> None:
        from jsonschema import Draft202012Validator
        self.url, self.spec, self.checked = url, json.loads(OPENAPI.read_text()), set()
        self._v = Draft202012Validator

    def check(self, method: str, route: str, status: int, body: object) -> None:
        resp = self.spec["paths"][route][method]["responses"][str(status)]
        schema = {**resp["content"]["application/json"]["schema"], "components": self.spec["components"]}
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in self._v(schema).iter_errors(body)]
        assert not errors, f"{method.upper()} {route} {status}: {errors}"
        self.checked.add((method, route, status))

    async def call(self, method: str, route: str, path: str, expect: int, **kw: Any) -> Any:
        import aiohttp
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, **kw) as r:
            assert r.status == expect, (path, r.status, await r.text())
            body = await r.json()
        self.check(method, route, expect, body)
        return body


def test_a_running_validator_answers_as_the_openapi_schemas_say(node) -> None:  # fixture
    import asyncio

    import msgpack

    from node.ipfs.cid import cid_v1_raw
    from node.tx import Grant, Policy, Profile, Read, SealedKey, Write
    from node.tx.requests import blob_request_digest, blob_upload_digest

    api = _Api(node.url)
    patient, staff = seed_identity("patient"), seed_identity("staff")
    pa, sa = patient.address.hex(), staff.address.hex()

    async def flow() -> None:
        st = await api.call("get", "/v1/status", "/v1/status", 200)
        chain = st["chain_id"]
        g = await api.call("get", "/v1/genesis", "/v1/genesis", 200)
        assert g["genesis_hash"] == content_hash(g).hex()  # the file as loaded, with its recorded hash
        me = bytes.fromhex(g["validators"][st["validator_index"]]["public_key"])  # a download names its validator
        now = int(time.time() * 1000)
        blob = b"\x00" * 12 + b"ciphertext of the example window" + b"\x00" * 16
        cid = cid_v1_raw(blob)
        cred = issue(dev_issuer(node.home), chain, staff.address, int(time.time() * 1000) + 10**8)
        profile = Tx.build(staff, chain, 1, Profile("Dr. Ada", "physician", "General Hospital", staff.box_public, cred))
        res = await api.call("post", "/v1/tx", "/v1/tx", 202, data=profile.raw)
        await api.call("get", "/v1/tx/{id}", f"/v1/tx/{res['id']}?wait=10", 200)
        staff2 = seed_identity("staff-2")
        p2 = Tx.build(staff2, chain, 1, Profile("N", "nurse", "General Hospital", staff2.box_public))
        st2 = await api.call("post", "/v1/tx", "/v1/tx?wait=10", 200, data=p2.raw)  # answered at the commit
        assert st2["status"] == "committed" and st2["id"] == p2.id.hex() and "receipt" in st2
        bad = Tx.build(staff, chain, 5, Profile("x", "y", "z", staff.box_public))  # nonce gap: refused
        await api.call("post", "/v1/tx", "/v1/tx", 409, data=bad.raw)
        await api.call("get", "/v1/tx/{id}", f"/v1/tx/{bad.id.hex()}", 200)  # rejected, with the reason
        await api.call("get", "/v1/tx/{id}", f"/v1/tx/{'00' * 32}", 404)
        await api.call("get", "/v1/tx/{id}", "/v1/tx/zz", 400)
        k = seal.seal(staff.box_public, b"k" * 32)
        txs = [Tx.build(patient, chain, 1, Grant(staff.address, (1, 2), 0, (SealedKey(1, 0, k),))),
               Tx.build(patient, chain, 2, Policy(True)),
               Tx.build(patient, chain, 3, Write(1, cid.to_bytes(), len(blob), 0, now - 60_000, now - 30_000))]
        items = [txs[0].raw, txs[1].raw, [txs[2].raw, blob], b"\x01"]
        res = await api.call("post", "/v1/txs", "/v1/txs", 200, data=msgpack.packb(items))
        assert [r["status"] for r in res["results"]] == [202, 202, 202, 400]
        st = await api.call("get", "/v1/tx/{id}", f"/v1/tx/{txs[2].id.hex()}?wait=10", 200)
        assert st["status"] == "committed" and "blob" in st
        reads = [Tx.build(staff, chain, 2, Read(patient.address, 1, cid.to_bytes(), 0, now)),
                 Tx.build(staff, chain, 3, Read(patient.address, 1, b"", 0, now, "ETREAT"))]
        await api.call("post", "/v1/txs", "/v1/txs", 200, data=msgpack.packb([r.raw for r in reads]))
        await api.call("get", "/v1/tx/{id}", f"/v1/tx/{reads[1].id.hex()}?wait=10", 200)
        await api.call("get", "/v1/blocks/{height}", "/v1/blocks/latest", 200)
        await api.call("get", "/v1/blocks/{height}", "/v1/blocks/1", 200)
        await api.call("get", "/v1/blocks/{height}", "/v1/blocks/999999", 404)
        t = int(time.time() * 1000)
        up = b"an upload" * 100
        hdr = {"X-Medchain-Pubkey": patient.public_key.hex(), "X-Medchain-Time": str(t),
               "X-Medchain-Signature": patient.sign(blob_upload_digest(chain, me, hashlib.sha256(up).digest(), len(up), t)).hex()}
        await api.call("post", "/v1/blobs", "/v1/blobs", 201, data=up, headers=hdr)
        await api.call("post", "/v1/blobs", "/v1/blobs", 401, data=up)
        hdr = {"X-Medchain-Pubkey": staff.public_key.hex(), "X-Medchain-Time": str(t), "X-Medchain-Read": reads[0].id.hex(),
               "X-Medchain-Signature": staff.sign(blob_request_digest(chain, me, cid.to_bytes(), reads[0].id, t)).hex()}
        import aiohttp
        async with aiohttp.ClientSession() as s, s.get(f"{node.url}/v1/blobs/{cid}", headers=hdr) as r:
            assert r.status == 200 and await r.read() == blob and r.headers["X-Medchain-Epoch"] == "0"
        await api.call("get", "/v1/blobs/{cid}", f"/v1/blobs/{cid}", 401)
        for q in ("", "?proof=1"):
            await api.call("get", "/v1/accounts/{addr}", f"/v1/accounts/{pa}{q}", 200)
            await api.call("get", "/v1/accounts/{addr}", f"/v1/accounts/{sa}{q}", 200)
            audit = await api.call("get", "/v1/patients/{addr}/audit", f"/v1/patients/{pa}/audit{q}", 200)
            assert len(audit["reads"]) == 2 and len(audit["break_glass"]) == 1
            await api.call("get", "/v1/patients/{addr}/grants", f"/v1/patients/{pa}/grants{q}", 200)
            keys = await api.call("get", "/v1/patients/{addr}/keys/{staff}", f"/v1/patients/{pa}/keys/{sa}{q}", 200)
            assert keys["keys"][0]["type"] == "heart_rate"
            data = await api.call("get", "/v1/patients/{addr}/data", f"/v1/patients/{pa}/data{q}", 200)
            assert len(data["data"]) == 1
        data = await api.call("get", "/v1/patients/{addr}/data", f"/v1/patients/{pa}/data?type=heart_rate", 200)
        assert len(data["data"]) == 1
        await api.call("get", "/v1/patients/{addr}/data", f"/v1/patients/{pa}/data?type=1", 400)  # a name, not a number
        await api.call("get", "/v1/accounts/{addr}", "/v1/accounts/abc", 400)
        await api.call("post", "/v1/proofs", "/v1/proofs", 400, data=b"\xc1")

    asyncio.run(flow())
    routes = {(m, r) for m, r, _ in api.checked}
    assert len(routes) == 14, sorted(routes)  # every JSON route but the binary-only ones was exercised


def test_grant_types_have_one_order(ex: dict) -> None:
    """Section 3: a grant's types are strictly increasing; any other order or a repeat is refused."""
    from node.tx import TxError
    from node.wire import encode

    payload = decode_canonical(_bytes(ex, "tx/grant/payload"))
    patient = seed_identity("patient")
    for types in ([2, 1], [1, 1]):
        p = encode([*payload[:6], types, payload[7], []])
        raw = encode([p, patient.sign(hashlib.sha256(p).digest())])
        with pytest.raises(TxError, match="sorted and unique"):
            Tx.decode(raw, CHAIN_ID)


def test_the_credential_shown_is_the_genesis_issuers_for_the_staff_member(ex: dict) -> None:
    from node.tx.credential import credential_digest, from_json, signed_by_issuer
    cred, staff = from_json(ex["credential/json"]), seed_identity("staff")
    assert cred.issuer == seed_identity("issuer").public_key
    assert ex["credential/digest"] == credential_digest(CHAIN_ID, staff.address, cred.not_after_ms)
    assert signed_by_issuer(cred, CHAIN_ID, staff.address)
    issuers = [i["public_key"] for i in ex["api/genesis"]["issuers"]]
    assert issuers == [cred.issuer.hex()]
