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
import re
import time
from pathlib import Path
from typing import Any

import pytest

from devices.load.follow import Follower, describe
from devices.patient.client import NodeClient
from node import clock, merkle
from node.api import proofs
from node.api.chain import tx_answer
from node.block import Block, Header, vote_digest
from node.crypto.keys import Identity
from node.execution import build_block
from node.genesis import Params, init_home
from node.ipfs.cid import raw_cid_bytes
from node.proof import MAX_BUNDLE, ProofError, check_bundle, verify_block_json, verify_inclusion, verify_status
from node.state import keys, smt
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
        self.v.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    n = Net(tmp_path_factory.mktemp("proof"))
    yield n
    n.close()


def refused(message: str, fn: Any, *args: Any) -> None:
    """`fn(*args)` raises ProofError whose whole message matches the regex `message`: the reason a
    client gets (and a log shows) is part of what is tested."""
    with pytest.raises(ProofError) as e:
        fn(*args)
    assert re.fullmatch(message, str(e.value)), str(e.value)


CERT2 = "block 2: the certificate lacks 2f\\+1 valid genesis validator signatures"
MERKLE = "Merkle path does not lead to the block's transaction root"


def not_under_root(key: bytes) -> str:
    return re.escape(f"proof for state key {key[:1]!r}{key[1:9].hex()}… does not lead to the certified state root")


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
    refused("header of chain 'proof-test'", verify_status, net.writes[1].id, net.answer(net.writes[1]),
            net.validators, "another-chain")


@pytest.mark.parametrize("signers", [[0, 1], [0, 0, 1], [0, 1, 3, 3], [0, 1, 7]], ids=["two", "repeated", "repeated-4", "unknown-index"])
def test_a_certificate_below_2f_plus_1_distinct_genesis_signatures_is_refused(net: Net, signers: list[int]) -> None:
    st = net.answer(net.writes[1])
    blk = net.blocks[1]
    d = vote_digest(CHAIN, blk.cert_view, blk.header.seq, blk.hash)
    st["certificate"] = [[i, net.idents[i % N].sign(d).hex()] for i in signers]
    refused(CERT2, _status, net, st)


def test_signatures_of_keys_outside_the_genesis_are_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    blk = net.blocks[1]
    d = vote_digest(CHAIN, blk.cert_view, blk.header.seq, blk.hash)
    forged = [Identity.from_seed(b"not-a-validator-%d" % i) for i in range(3)]
    st["certificate"] = [[i, forged[i].sign(d).hex()] for i in range(3)]
    refused(CERT2, _status, net, st)


def test_a_certificate_for_another_view_than_it_names_is_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    st["cert_view"] = 2  # signed over view 1
    refused(CERT2, _status, net, st)


def test_a_certificate_from_a_view_before_the_block_is_refused(net: Net) -> None:
    # 2f+1 valid signatures over view 0, for a block proposed in view 1: no commit of that view exists
    st = net.answer(net.writes[1])
    early = net.sign(net.blocks[1], range(3), 0)
    st["certificate"] = [[i, s.hex()] for i, s in early.cert]
    st["cert_view"] = 0
    refused(CERT2, _status, net, st)
    st["certificate"], st["cert_view"] = [[i, s.hex()] for i, s in net.sign(net.blocks[1], range(3), 1).cert], 1
    assert _status(net, st).height == 2  # the same signers over the block's own view pass


def test_a_cached_certificate_check_does_not_vouch_for_a_forged_one(net: Net) -> None:
    st = net.answer(net.writes[1])
    _status(net, st)  # cached: the header with its honest certificate
    bad = copy.deepcopy(st)
    bad["certificate"] = [[i, bytes(64).hex()] for i in range(3)]
    refused(CERT2, _status, net, bad)


@pytest.mark.parametrize("field,value,match", [
    ("header", None, "the answer carries no certified header \\(KeyError\\('header'\\)\\)"),
    ("header", "zz", "the answer carries no certified header \\(ValueError\\(.*\\)\\)"),
    ("header", "00", "bad header: header is \\[1, chain_id, .*\\]"),
    ("certificate", None, "the answer carries no certified header \\(KeyError\\('certificate'\\)\\)"),
    ("certificate", [[0]], "the answer carries no certified header \\(ValueError\\(.*\\)\\)"),
    ("certificate", [["0", "00"]], "cert_view and validator indexes must be integers"),
    ("certificate", [[True, "00"]], "cert_view and validator indexes must be integers"),
    ("cert_view", "1", "cert_view and validator indexes must be integers"),
    ("cert_view", 1.0, "cert_view and validator indexes must be integers"),
    ("cert_view", None, "cert_view and validator indexes must be integers"),
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
    refused(CERT2, _status, net, st)


@pytest.mark.parametrize("change,match", [
    (lambda st: st.update(index=0), MERKLE),
    (lambda st: st.update(tx_count=3), MERKLE),
    (lambda st: st.update(proof=[("00" * 32)]), MERKLE),
    (lambda st: st.update(proof=[]), MERKLE),
    (lambda st: st.update(proof=["zz"]), "the answer carries no audit path \\(ValueError\\(.*\\)\\)"),
    (lambda st: st.pop("proof"), "the answer carries no audit path \\(KeyError\\('proof'\\)\\)"),
    (lambda st: st.pop("index"), "the answer carries no audit path \\(KeyError\\('index'\\)\\)"),
    (lambda st: st.pop("tx_count"), "the answer carries no audit path \\(KeyError\\('tx_count'\\)\\)"),
    (lambda st: st.update(index="1"), "index and tx_count must be integers"),
    (lambda st: st.update(tx_count=2.0), "index and tx_count must be integers"),
    (lambda st: st.update(index=True), "index and tx_count must be integers"),
])
def test_an_audit_path_that_does_not_lead_to_the_tx_root_is_refused(net: Net, change: Any, match: str) -> None:
    st = net.answer(net.writes[1])
    change(st)
    refused(match, _status, net, st)


def test_another_transactions_answer_is_refused(net: Net) -> None:
    # a full, valid answer for the other write in the same block: its path does not start at our id
    refused(MERKLE, _status, net, net.answer(net.writes[0]), net.writes[1])


@pytest.mark.parametrize("field,value", [("height", 1), ("height", "2"), ("height", None), ("block_hash", "00" * 32),
                                         ("block_hash", None)])
def test_a_height_or_block_hash_that_is_not_the_headers_is_refused(net: Net, field: str, value: Any) -> None:
    st = net.answer(net.writes[1])
    if value is None:
        del st[field]
    else:
        st[field] = value
    refused("the answer's height or block hash is not its certified header's", _status, net, st)


@pytest.mark.parametrize("code", [1, 4, None, "0", False, 0.0])
def test_a_result_code_the_proven_receipt_contradicts_is_refused(net: Net, code: Any) -> None:
    st = net.answer(net.writes[1])
    if code is None:
        del st["code"]
    else:
        st["code"] = code
    refused(re.escape(f"the proven receipt (2, 1, 0) is not the answer's (height 2, index 1, code {code!r})"),
            _status, net, st)


def test_an_answer_without_a_proven_receipt_is_refused(net: Net) -> None:
    for bad in (None, "zz", 7):
        st = net.answer(net.writes[1])
        if bad is None:
            del st["receipt"]
        else:
            st["receipt"] = bad
        refused("the answer carries no proven receipt", _status, net, st)


def test_another_transactions_receipt_is_refused(net: Net) -> None:
    st = net.answer(net.writes[1])
    st["receipt"] = net.answer(net.writes[0])["receipt"]  # proven, but for the other key
    refused(not_under_root(keys.receipt(net.writes[1].id)), _status, net, st)


def test_a_receipt_from_before_the_block_is_refused(net: Net) -> None:
    st = net.answer(net.writes[0])
    st["receipt"] = net.stale_receipt.hex()  # certified block 1: the write is not in it yet
    refused("stale header: block 1, but block 2 is already known", _status, net, st, net.writes[0])


def test_a_receipt_value_changed_under_its_proof_is_refused(net: Net) -> None:
    # the proven receipt says [2, 1, 0]; a validator that rewrites it to another index (or code) keeps
    # the proof, which then no longer leads to the certified state root
    st = net.answer(net.writes[1])
    b = decode(bytes.fromhex(st["receipt"]))
    val, proof = b[3][0]
    height, _, code = decode(val)
    b[3][0] = [encode([height, 0, code]), proof]
    st["receipt"] = encode(b).hex()
    refused(not_under_root(keys.receipt(net.writes[1].id)), _status, net, st)


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A chain whose 2f+1 signers certified block 3 naming a transaction that was never executed:
    its tx root holds the id, and its state holds no receipt (or `junk` at the receipt key)."""
    n = Net(tmp_path_factory.mktemp("forged"))
    yield n
    n.close()


def _forge(net: Net, txid: bytes, receipt: bytes | None) -> dict[str, Any]:
    v = net.v
    tip = v.pipeline.head_tip()
    ex = build_block(tip, [], CHAIN, 1, 1, clock.now_ms())
    writes = {} if receipt is None else {keys.receipt(txid): receipt}
    root, nodes = smt.update(tip.tree, writes)
    h = ex.block.header
    header = Header(h.chain_id, h.height, h.prev_hash, h.view, h.seq, h.time_ms, merkle.root([txid]), root, h.proposer)
    block = net.sign(Block(header, ()), range(3), 1)
    v.ledger.commit_block(block, writes, nodes)
    net.blocks.append(block)
    return {"status": "committed", "height": h.height, "index": 0, "code": 0, "block_hash": block.hash.hex(),
            "tx_count": 1, "proof": [], "header": header.encode().hex(),
            "certificate": [[i, s.hex()] for i, s in block.cert], "cert_view": 1,
            "receipt": proofs.bundle(v, [keys.receipt(txid)]).hex()}


@pytest.mark.parametrize("receipt,shown", [(None, "None"), (b"junk", "b'junk'"), (encode([3, 0]), repr(encode([3, 0])))])
def test_a_certified_commit_without_a_receipt_is_refused(forged: Net, receipt: bytes | None, shown: str) -> None:
    txid = os.urandom(32)
    st = _forge(forged, txid, receipt)
    height = st["height"]
    refused(re.escape(f"the proven receipt {shown} is not the answer's (height {height}, index 0, code 0)"),
            verify_status, txid, st, forged.validators, CHAIN)
    good = _forge(forged, txid := os.urandom(32), encode([height + 1, 0, 0]))  # a receipt as execution writes it
    assert verify_status(txid, good, forged.validators, CHAIN).height == height + 1


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
    refused("block 2: its transaction ids are not the ones under its certified tx_root", verify_block_json, b, net.validators, CHAIN)


@pytest.mark.parametrize("change,match", [
    (lambda b: b.pop("tx_ids"), "the block carries no transaction ids \\(KeyError\\('tx_ids'\\)\\)"),
    (lambda b: b.update(tx_ids=["zz"]), "the block carries no transaction ids \\(ValueError\\(.*\\)\\)"),
    (lambda b: b.update(tx_ids=None), "the block carries no transaction ids \\(TypeError\\(.*\\)\\)"),
    (lambda b: b.update(height=1), "the block's height is not its certified header's"),
    (lambda b: b.pop("height"), "the block's height is not its certified header's"),
    (lambda b: b.update(cert_view=0), CERT2),
    (lambda b: b.update(certificate=b["certificate"][:2]), CERT2),
])
def test_a_block_that_is_not_what_it_claims_is_refused(net: Net, change: Any, match: str) -> None:
    b = net.block_json(2)
    change(b)
    refused(match, verify_block_json, b, net.validators, CHAIN)


def test_a_block_of_another_chain_is_refused(net: Net) -> None:
    refused("header of chain 'proof-test'", verify_block_json, net.block_json(1), net.validators, "other")


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


BUNDLE_SHAPE = "proof bundle is \\[header, certificate, cert_view, entries\\]"
ENTRY_SHAPE = "a proof entry is \\[value or nil, proof\\]"
CERT_SHAPE = "a certificate is \\[\\[validator_index, signature\\], \\.\\.\\.\\]"


@pytest.mark.parametrize("change,match", [
    (lambda b: b[3][0].__setitem__(0, encode(4)), 0),  # another nonce
    (lambda b: b[3][0].__setitem__(0, None), 0),  # a present key said absent
    (lambda b: b[3][3].__setitem__(0, encode(1)), 3),  # an absent key said present
    (lambda b: b[3].reverse(), 0),  # proofs of other keys
    (lambda b: b[3].pop(), "3 proofs for 4 keys"),
    (lambda b: b[3].append(b[3][0]), "5 proofs for 4 keys"),
    (lambda b: b[3].__setitem__(0, [b"", b"", b""]), ENTRY_SHAPE),
    (lambda b: b[3].__setitem__(0, [1, b[3][0][1]]), ENTRY_SHAPE),
    (lambda b: b[3].__setitem__(0, [None, None]), ENTRY_SHAPE),
    (lambda b: b[3].__setitem__(0, "x"), ENTRY_SHAPE),
    (lambda b: b.pop(), BUNDLE_SHAPE),
    (lambda b: b.append([]), BUNDLE_SHAPE),
    (lambda b: b.__setitem__(0, "h"), BUNDLE_SHAPE),
    (lambda b: b.__setitem__(1, b"c"), BUNDLE_SHAPE),
    (lambda b: b.__setitem__(2, True), BUNDLE_SHAPE),
    (lambda b: b.__setitem__(3, b""), BUNDLE_SHAPE),
    (lambda b: b[1].__setitem__(0, [0]), CERT_SHAPE),
    (lambda b: b[1].__setitem__(0, [0, b[1][0][1], 1]), CERT_SHAPE),
    (lambda b: b[1].__setitem__(0, [True, b[1][0][1]]), CERT_SHAPE),
    (lambda b: b[1].__setitem__(0, [0, "sig"]), CERT_SHAPE),
    (lambda b: b[1].__setitem__(0, b"x"), CERT_SHAPE),
    (lambda b: b[1].pop(), CERT2),
    (lambda b: b.__setitem__(2, 0), CERT2),
])
def test_a_bundle_that_proves_something_else_is_refused(net: Net, change: Any, match: str | int) -> None:
    b = _bundle(net)
    change(b)
    message = not_under_root(_keys(net)[match]) if isinstance(match, int) else match
    refused(message, check_bundle, encode(b), _keys(net), CHAIN, net.validators, 2)


def test_a_bundle_that_does_not_decode_is_refused(net: Net) -> None:
    raw = proofs.bundle(net.v, _keys(net))
    for bad in (b"", raw[:-1], raw + b"\x00", b"\xc1"):
        refused("proof bundle does not decode: .*", check_bundle, bad, _keys(net), CHAIN, net.validators, 2)
    k = _keys(net)[0]
    refused(re.escape(f"proof for state key {k[:1]!r}{k[1:9].hex()}…: proof encoding: ") + ".*",
            check_bundle, encode([*_bundle(net)[:3], [[None, b"\xc1"]] * 4]), _keys(net), CHAIN, net.validators, 2)
    huge = encode([b"", [], 0, [b"\x00" * MAX_BUNDLE]])  # refused by size before it is parsed
    refused("proof bundle does not decode: .*", check_bundle, huge, _keys(net), CHAIN, net.validators, 2)


def test_a_bundle_of_many_keys_passes(net: Net) -> None:
    # a patient's whole list is proven in one bundle: far above a transaction's 16 KiB decode limit
    ks = [keys.data_entry(net.patient.address, i) for i in range(300)]
    raw = proofs.bundle(net.v, ks)
    assert len(raw) > 32 * 1024
    _, values = check_bundle(raw, ks, CHAIN, net.validators, 2)
    assert [v is not None for v in values.values()] == [True, True] + [False] * 298


def test_a_bundle_below_the_height_already_known_is_refused(net: Net) -> None:
    raw = proofs.bundle(net.v, _keys(net))
    assert check_bundle(raw, _keys(net), CHAIN, net.validators, 2)[0].height == 2
    refused("stale header: block 2, but block 3 is already known", check_bundle, raw, _keys(net), CHAIN,
            net.validators, 3)
    refused("header of chain 'proof-test'", check_bundle, raw, _keys(net), "other", net.validators, 0)


# ---- verify_inclusion: a commit against the whole block ------------------------------------------

def test_inclusion_in_a_downloaded_block(net: Net) -> None:
    raw = net.blocks[1].encode()
    for k, tx in enumerate(net.writes):  # the first index of a block counts too
        path = [bytes.fromhex(p) for p in net.answer(tx)["proof"]]
        assert verify_inclusion(tx.id, k, 2, path, raw, net.validators, CHAIN).hash == net.blocks[1].hash
    tid = net.writes[1].id
    path = [bytes.fromhex(p) for p in net.answer(net.writes[1])["proof"]]
    where = "the transaction is not at that index of the block"
    for index, count in ((0, 2), (2, 2), (-1, 2), (1, 3), (1, 1)):
        refused(where, verify_inclusion, tid, index, count, path, raw, net.validators, CHAIN)
    refused("block is from another chain", verify_inclusion, tid, 1, 2, path, raw, net.validators, "other")
    refused("block does not decode: .*", verify_inclusion, tid, 1, 2, path, raw[:-1], net.validators, CHAIN)
    refused(MERKLE, verify_inclusion, tid, 1, 2, [bytes(32)], raw, net.validators, CHAIN)
    uncertified = net.sign(net.blocks[1], [0, 1], 1).encode()
    refused("commit certificate does not carry 2f\\+1 valid validator signatures", verify_inclusion, tid, 1, 2,
            path, uncertified, net.validators, CHAIN)


# ---- the load generators' follower (devices/load/follow.py) --------------------------------------

def _follower(net: Net, genesis: bool = True) -> Follower:
    # check() does no I/O: the client is never asked anything here
    return Follower([NodeClient("http://127.0.0.1:9")], net.v.genesis if genesis else None, CHAIN, 0)


def test_the_follower_takes_each_next_proven_block_in_turn(net: Net) -> None:
    f = _follower(net)
    for height in (1, 2):
        f.check(net.block_json(height))
        f.height += 1  # as blocks() does once a block is taken
        assert f.last_hash == net.blocks[height - 1].hash


def test_the_follower_refuses_a_replayed_or_unlinked_certified_block(net: Net) -> None:
    f = _follower(net)
    refused("asked for block 1, answered with block 2 \\(certified, but another\\)", f.check, net.block_json(2))
    f.check(net.block_json(1))
    f.height, f.last_hash = 1, bytes(32)  # as if another block 1 had been proven before
    refused("block 2 does not extend the block 1 proven before it", f.check, net.block_json(2))
    f.last_hash = None  # the first block a follower takes has nothing to extend
    f.check(net.block_json(2))
    b = net.block_json(2)
    b["tx_ids"].pop()
    f.last_hash = net.blocks[0].hash
    refused("block 2: its transaction ids are not the ones under its certified tx_root", f.check, b)


def test_without_a_genesis_the_follower_checks_only_the_height(net: Net) -> None:
    f = _follower(net, genesis=False)
    assert f.proven_or_none is None
    b = net.block_json(1)
    b["tx_ids"].append("00" * 32)  # taken on the validator's word: nothing can be checked
    f.check(b)
    refused("asked for block 1, answered with 2", f.check, net.block_json(2))
    refused("asked for block 1, answered with None", f.check, {})
    assert describe(None, 0) == "taken on the followed validator's word (no genesis given)"
    assert describe(5, 2) == "5 proven by certificate, 2 refused"
    g = _follower(net)
    g.proven = 3
    assert g.proven_or_none == 3
