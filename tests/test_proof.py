"""The light-client checks of node/proof.py, in one process and without a network: a real validator
(its LMDB ledger and block store in a temporary directory) executes and commits two blocks whose
commit certificates the genesis validators' own keys sign; the answers under test are the API's own
(`tx_answer`, `proofs.bundle`, the JSON of `GET /v1/blocks`), and each test changes one thing in
an honest answer, as a lying validator would, and checks that the client refuses it for that reason.

The devnet tests (tests/test_devnet.py, tests/test_lying_validator.py) check the same answers from
running validators; these run in milliseconds, so mutation testing (scripts/mutation.py) can use them.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest

from node import clock
from node.api import proofs
from node.api.chain import tx_answer
from node.block import Block, Header, vote_digest
from node.crypto.keys import Identity
from node.execution import build_block
from node.genesis import Params, init_home
from node.ipfs.cid import raw_cid_bytes
from node.proof import ProofError, check_bundle, verify_block_json, verify_inclusion, verify_status
from node.state import keys
from node.tx import Profile, Tx, Write
from node.validator import Validator
from node.wire import decode, encode

CHAIN = "proof-test"
N = 4  # f = 1: a certificate needs 3 signatures


class Net:
    """Two committed blocks: block 1 (view 0) holds a profile, block 2 (view 1) two data writes."""

    def __init__(self, d: Path) -> None:
        homes = init_home(d, CHAIN, [f"127.0.0.1:{9000 + i}" for i in range(N)], int(time.time() * 1000),
                          Params(sender_rate=1e9, sender_burst=1e9),
                          p2p=[f"127.0.0.1:{9100 + i}" for i in range(N)])
        self.idents = [Identity.load(h / "node_key.json") for h in homes]
        self.validators = [i.public_key for i in self.idents]
        self.v = Validator(homes[0])
        self.patient = Identity.from_seed(b"proof-test-patient")
        now = int(time.time() * 1000)
        blobs = [os.urandom(120) for _ in range(2)]
        txs = Tx.build_batch(self.patient, CHAIN, 1, [Profile("Pat", "patient", "", bytes(32))] + [
            Write(1, raw_cid_bytes(b), len(b), 0, now + k * 1000, now + k * 1000 + 999) for k, b in enumerate(blobs)])
        self.profile, self.writes = txs[0], txs[1:]
        self.blocks: list[Block] = []
        self._commit([(self.profile.raw, None)], view=0)
        # a receipt bundle for a write, taken at block 1 (before the write): stale once block 2 holds it
        self.stale_receipt = proofs.bundle(self.v, [keys.receipt(self.writes[0].id)])
        self._commit([(t.raw, b) for t, b in zip(self.writes, blobs, strict=True)], view=1)

    def sign(self, block: Block, signers: range | list[int], view: int) -> Block:
        h = block.header
        d = vote_digest(CHAIN, view, h.seq, block.hash)
        return block.with_cert([(i, self.idents[i].sign(d)) for i in signers], view)

    def _commit(self, items: list[tuple[bytes, bytes | None]], view: int) -> None:
        v = self.v
        res = v.submit_many_sync(items)
        assert all(isinstance(r, bytes) for r in res), res
        ex = build_block(v.pipeline.head_tip(), v.mempool.batch(100), CHAIN, view, view % N, clock.now_ms())
        block = self.sign(ex.block, range(3), view)
        roots, sidecars = v.committer.blobs_of(ex)
        v.committer.write(block, ex, sidecars, roots)
        v.mempool.remove(ex.txs)
        self.blocks.append(block)

    def answer(self, tx: Tx) -> dict[str, Any]:
        return tx_answer(self.v, tx.id)

    def block_json(self, height: int) -> dict[str, Any]:
        b = self.blocks[height - 1]
        return {"height": height, "header": b.header.encode().hex(), "certificate": [[i, s.hex()] for i, s in b.cert],
                "cert_view": b.cert_view, "tx_ids": [t.hex() for t in b.tx_ids]}

    def close(self) -> None:
        self.v.pipeline.close()
        self.v.admission.close()
        self.v.ledger.close()
        self.v.blobs.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    n = Net(tmp_path_factory.mktemp("proof"))
    yield n
    n.close()


def refused(match: str, fn: Any, *args: Any) -> None:
    with pytest.raises(ProofError, match=match):
        fn(*args)


def _status(net: Net, st: dict[str, Any], tx: Tx | None = None) -> Header:
    return verify_status((tx or net.writes[1]).id, st, net.validators, CHAIN)


# ---- verify_status: GET /v1/tx/{id} ------------------------------------------------------------

def test_an_honest_answer_passes_and_names_its_certified_block(net: Net) -> None:
    for tx, height, index in ((net.profile, 1, 0), (net.writes[0], 2, 0), (net.writes[1], 2, 1)):
        st = net.answer(tx)
        assert st["status"] == "committed" and st["code"] == 0
        h = _status(net, st, tx)
        assert (h.height, h.chain_id, h.hash) == (height, CHAIN, net.blocks[height - 1].hash)
        assert st["index"] == index and h.view == height - 1


def test_an_answer_of_another_chain_is_refused(net: Net) -> None:
    refused("of chain 'proof-test'", verify_status, net.writes[1].id, net.answer(net.writes[1]),
            net.validators, "another-chain")


@pytest.mark.parametrize("signers", [[0, 1], [0, 0, 1], [0, 1, 3, 3], [0, 1, 7]], ids=["two", "repeated", "repeated-4", "unknown-index"])
def test_a_certificate_below_2f_plus_1_distinct_genesis_signatures_is_refused(net: Net, signers: list[int]) -> None:
    st = net.answer(net.writes[1])
    blk = net.blocks[1]
    d = vote_digest(CHAIN, blk.cert_view, blk.header.seq, blk.hash)
    st["certificate"] = [[i, net.idents[i % N].sign(d).hex()] for i in signers]
    refused("lacks 2f\\+1", _status, net, st)


def test_signatures_of_keys_outside_the_genesis_are_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    blk = net.blocks[1]
    d = vote_digest(CHAIN, blk.cert_view, blk.header.seq, blk.hash)
    forged = [Identity.from_seed(b"not-a-validator-%d" % i) for i in range(3)]
    st["certificate"] = [[i, forged[i].sign(d).hex()] for i in range(3)]
    refused("lacks 2f\\+1", _status, net, st)


def test_a_certificate_for_another_view_than_it_names_is_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    st["cert_view"] = 2  # signed over view 1
    refused("lacks 2f\\+1", _status, net, st)


def test_a_certificate_from_a_view_before_the_block_is_refused(net: Net) -> None:
    # 2f+1 valid signatures over view 0, for a block proposed in view 1: no commit of that view exists
    st = net.answer(net.writes[1])
    early = net.sign(net.blocks[1], range(3), 0)
    st["certificate"] = [[i, s.hex()] for i, s in early.cert]
    st["cert_view"] = 0
    refused("lacks 2f\\+1", _status, net, st)
    st["certificate"], st["cert_view"] = [[i, s.hex()] for i, s in net.sign(net.blocks[1], range(3), 1).cert], 1
    assert _status(net, st).height == 2  # the same signers over the block's own view pass


def test_a_cached_certificate_check_does_not_vouch_for_a_forged_one(net: Net) -> None:
    st = net.answer(net.writes[1])
    _status(net, st)  # cached: the header with its honest certificate
    bad = copy.deepcopy(st)
    bad["certificate"] = [[i, bytes(64).hex()] for i in range(3)]
    refused("lacks 2f\\+1", _status, net, bad)


@pytest.mark.parametrize("field,value,match", [
    ("header", None, "no certified header"),
    ("header", "zz", "no certified header"),
    ("header", "00", "bad header"),
    ("certificate", None, "no certified header"),
    ("certificate", [[0]], "no certified header"),
    ("certificate", [["0", "00"]], "must be integers"),
    ("certificate", [[True, "00"]], "must be integers"),
    ("cert_view", "1", "must be integers"),
    ("cert_view", 1.0, "must be integers"),
    ("cert_view", None, "must be integers"),
])
def test_a_malformed_certified_header_is_refused_for_its_reason(net: Net, field: str, value: Any, match: str) -> None:
    st = net.answer(net.writes[1])
    if value is None and field != "cert_view":
        del st[field]
    else:
        st[field] = value
    refused(match, _status, net, st)


def test_a_header_that_is_not_the_certified_one_is_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    h = net.blocks[1].header
    other = Header(h.chain_id, h.height, h.prev_hash, h.view, h.seq, h.time_ms, h.tx_root, bytes(32), h.proposer)
    st["header"] = other.encode().hex()  # another state root under the real certificate
    refused("lacks 2f\\+1", _status, net, st)


@pytest.mark.parametrize("change,match", [
    (lambda st: st.update(index=0), "Merkle path"),
    (lambda st: st.update(tx_count=3), "Merkle path"),
    (lambda st: st.update(proof=[("00" * 32)]), "Merkle path"),
    (lambda st: st.update(proof=[]), "Merkle path"),
    (lambda st: st.update(proof=["zz"]), "no audit path"),
    (lambda st: st.pop("proof"), "no audit path"),
    (lambda st: st.pop("index"), "no audit path"),
    (lambda st: st.pop("tx_count"), "no audit path"),
    (lambda st: st.update(index="1"), "must be integers"),
    (lambda st: st.update(tx_count=2.0), "must be integers"),
    (lambda st: st.update(index=True), "must be integers"),
])
def test_an_audit_path_that_does_not_lead_to_the_tx_root_is_refused(net: Net, change: Any, match: str) -> None:
    st = net.answer(net.writes[1])
    change(st)
    refused(match, _status, net, st)


def test_another_transactions_answer_is_refused(net: Net) -> None:
    # a full, valid answer for the other write in the same block: its path does not start at our id
    refused("Merkle path", _status, net, net.answer(net.writes[0]), net.writes[1])


@pytest.mark.parametrize("field,value", [("height", 1), ("height", "2"), ("height", None), ("block_hash", "00" * 32),
                                         ("block_hash", None)])
def test_a_height_or_block_hash_that_is_not_the_headers_is_refused(net: Net, field: str, value: Any) -> None:
    st = net.answer(net.writes[1])
    if value is None:
        del st[field]
    else:
        st[field] = value
    refused("height or block hash", _status, net, st)


@pytest.mark.parametrize("code", [1, 4, None, "0", False, 0.0])
def test_a_result_code_the_proven_receipt_contradicts_is_refused(net: Net, code: Any) -> None:
    st = net.answer(net.writes[1])
    if code is None:
        del st["code"]
    else:
        st["code"] = code
    refused("proven receipt", _status, net, st)


def test_an_answer_without_a_proven_receipt_is_refused(net: Net) -> None:
    for bad in (None, "zz", 7):
        st = net.answer(net.writes[1])
        if bad is None:
            del st["receipt"]
        else:
            st["receipt"] = bad
        refused("no proven receipt", _status, net, st)


def test_another_transactions_receipt_is_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    st["receipt"] = net.answer(net.writes[0])["receipt"]  # proven, but for the other key
    refused("does not lead to the certified state root", _status, net, st)


def test_a_receipt_from_before_the_block_is_refused(net: Net) -> None:
    st = net.answer(net.writes[0])
    st["receipt"] = net.stale_receipt.hex()  # certified block 1: the write is not in it yet
    refused("stale header", _status, net, st, net.writes[0])


def test_a_receipt_value_changed_under_its_proof_is_refused(net: Net) -> None:
    # the proven receipt says [2, 1, 0]; a validator that rewrites it to another index (or code) keeps
    # the proof, which then no longer leads to the certified state root
    st = net.answer(net.writes[1])
    b = decode(bytes.fromhex(st["receipt"]))
    val, proof = b[3][0]
    height, _, code = decode(val)
    b[3][0] = [encode([height, 0, code]), proof]
    st["receipt"] = encode(b).hex()
    refused("does not lead to the certified state root", _status, net, st)


# ---- verify_block_json: GET /v1/blocks/{h} -----------------------------------------------------

def test_an_honest_block_passes(net: Net) -> None:
    for height in (1, 2):
        h = verify_block_json(net.block_json(height), net.validators, CHAIN)
        assert h.height == height and h.hash == net.blocks[height - 1].hash


@pytest.mark.parametrize("change", [
    lambda b: b["tx_ids"].append("00" * 32),
    lambda b: b["tx_ids"].pop(),
    lambda b: b["tx_ids"].reverse(),
    lambda b: b.update(tx_ids=[]),
], ids=["added", "withheld", "reordered", "emptied"])
def test_a_block_whose_ids_are_not_under_its_certified_root_is_refused(net: Net, change: Any) -> None:
    b = net.block_json(2)
    change(b)
    refused("not the ones under its certified tx_root", verify_block_json, b, net.validators, CHAIN)


@pytest.mark.parametrize("change,match", [
    (lambda b: b.pop("tx_ids"), "no transaction ids"),
    (lambda b: b.update(tx_ids=["zz"]), "no transaction ids"),
    (lambda b: b.update(tx_ids=None), "no transaction ids"),
    (lambda b: b.update(height=1), "height is not"),
    (lambda b: b.pop("height"), "height is not"),
    (lambda b: b.update(cert_view=0), "lacks 2f\\+1"),
    (lambda b: b.update(certificate=b["certificate"][:2]), "lacks 2f\\+1"),
])
def test_a_block_that_is_not_what_it_claims_is_refused(net: Net, change: Any, match: str) -> None:
    b = net.block_json(2)
    change(b)
    refused(match, verify_block_json, b, net.validators, CHAIN)


def test_a_block_of_another_chain_is_refused(net: Net) -> None:
    refused("of chain", verify_block_json, net.block_json(1), net.validators, "other")


# ---- check_bundle: POST /v1/proofs -------------------------------------------------------------

def _keys(net: Net) -> list[bytes]:
    addr = net.patient.address
    return [keys.nonce(addr), keys.profile(addr), keys.data_count(addr), keys.nonce(b"\x01" * 32)]


def test_a_bundle_proves_present_and_absent_keys(net: Net) -> None:
    ks = _keys(net)
    header, values = check_bundle(proofs.bundle(net.v, ks), ks, CHAIN, net.validators, 2)
    assert header.height == 2
    assert decode(values[ks[0]]) == 3 and values[ks[1]] is not None and decode(values[ks[2]]) == 2
    assert values[ks[3]] is None  # proven absent


def _bundle(net: Net) -> list[Any]:
    return decode(proofs.bundle(net.v, _keys(net)))


@pytest.mark.parametrize("change,match", [
    (lambda b: b[3][0].__setitem__(0, encode(4)), "does not lead"),  # another nonce
    (lambda b: b[3][0].__setitem__(0, None), "does not lead"),  # a present key said absent
    (lambda b: b[3][3].__setitem__(0, encode(1)), "does not lead"),  # an absent key said present
    (lambda b: b[3].reverse(), "does not lead"),  # proofs of other keys
    (lambda b: b[3].pop(), "3 proofs for 4 keys"),
    (lambda b: b[3].append(b[3][0]), "5 proofs for 4 keys"),
    (lambda b: b[3].__setitem__(0, [b"", b"", b""]), "is \\[value or nil, proof\\]"),
    (lambda b: b[3].__setitem__(0, [1, b[3][0][1]]), "is \\[value or nil, proof\\]"),
    (lambda b: b[3].__setitem__(0, [None, None]), "is \\[value or nil, proof\\]"),
    (lambda b: b[3].__setitem__(0, "x"), "is \\[value or nil, proof\\]"),
    (lambda b: b.pop(), "is \\[header, certificate, cert_view, entries\\]"),
    (lambda b: b.__setitem__(0, "h"), "is \\[header, certificate, cert_view, entries\\]"),
    (lambda b: b.__setitem__(1, b"c"), "is \\[header, certificate, cert_view, entries\\]"),
    (lambda b: b.__setitem__(2, True), "is \\[header, certificate, cert_view, entries\\]"),
    (lambda b: b.__setitem__(3, b""), "is \\[header, certificate, cert_view, entries\\]"),
    (lambda b: b[1].__setitem__(0, [0]), "a certificate is"),
    (lambda b: b[1].__setitem__(0, [True, b[1][0][1]]), "a certificate is"),
    (lambda b: b[1].__setitem__(0, [0, "sig"]), "a certificate is"),
    (lambda b: b[1].pop(), "lacks 2f\\+1"),
    (lambda b: b.__setitem__(2, 0), "lacks 2f\\+1"),
])
def test_a_bundle_that_proves_something_else_is_refused(net: Net, change: Any, match: str) -> None:
    b = _bundle(net)
    change(b)
    refused(match, check_bundle, encode(b), _keys(net), CHAIN, net.validators, 2)


def test_a_bundle_that_does_not_decode_is_refused(net: Net) -> None:
    raw = proofs.bundle(net.v, _keys(net))
    for bad in (b"", raw[:-1], raw + b"\x00", b"\xc1"):
        refused("does not decode", check_bundle, bad, _keys(net), CHAIN, net.validators, 2)
    refused("proof encoding", check_bundle, encode([*_bundle(net)[:3], [[None, b"\xc1"]] * 4]),
            _keys(net), CHAIN, net.validators, 2)


def test_a_bundle_below_the_height_already_known_is_refused(net: Net) -> None:
    raw = proofs.bundle(net.v, _keys(net))
    assert check_bundle(raw, _keys(net), CHAIN, net.validators, 2)[0].height == 2
    refused("stale header: block 2, but block 3", check_bundle, raw, _keys(net), CHAIN, net.validators, 3)
    refused("of chain", check_bundle, raw, _keys(net), "other", net.validators, 0)


# ---- verify_inclusion: a commit against the whole block ------------------------------------------

def test_inclusion_in_a_downloaded_block(net: Net) -> None:
    st = net.answer(net.writes[1])
    raw = net.blocks[1].encode()
    path = [bytes.fromhex(p) for p in st["proof"]]
    tid = net.writes[1].id
    assert verify_inclusion(tid, 1, 2, path, raw, net.validators, CHAIN).hash == net.blocks[1].hash
    refused("not at that index", verify_inclusion, tid, 0, 2, path, raw, net.validators, CHAIN)
    refused("not at that index", verify_inclusion, tid, 2, 2, path, raw, net.validators, CHAIN)
    refused("not at that index", verify_inclusion, tid, -1, 2, path, raw, net.validators, CHAIN)
    refused("not at that index", verify_inclusion, tid, 1, 3, path, raw, net.validators, CHAIN)
    refused("another chain", verify_inclusion, tid, 1, 2, path, raw, net.validators, "other")
    refused("does not decode", verify_inclusion, tid, 1, 2, path, raw[:-1], net.validators, CHAIN)
    refused("Merkle path", verify_inclusion, tid, 1, 2, [bytes(32)], raw, net.validators, CHAIN)
    uncertified = net.sign(net.blocks[1], [0, 1], 1).encode()
    refused("2f\\+1", verify_inclusion, tid, 1, 2, path, uncertified, net.validators, CHAIN)

