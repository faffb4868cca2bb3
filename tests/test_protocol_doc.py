"""docs/PROTOCOL.md's worked examples are the code's bytes: every labelled block is regenerated from
the same fixed seeds (devices/protocol_examples.py) and compared, and the examples are checked with
the independent decoders and verifiers (a second implementation would use the same checks)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from devices import envelope
from devices.protocol_examples import CHAIN_ID, Msgpack, blocks, examples, render, seed_identity
from node import merkle
from node.block import Block, Header, verify_cert
from node.crypto import seal
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import Cid
from node.proof import check_bundle
from node.sidecar import check_sidecar, decode_submission
from node.state import smt
from node.tx import KIND_NAMES, Tx
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
            assert body == render(kind, ex[name]), f"{name}: regenerate with python -m devices.protocol_examples --write"


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
    for name in ("profile", "grant", "policy", "write", "read", "break-glass-read", "revoke"):
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
    assert Genesis.load(g).to_json() == ex["api/genesis"]
