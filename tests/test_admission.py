"""Admission (node/admission.py), in process on a real validator's LMDB ledger and block store: the
checks a transaction passes before the mempool, and the bookkeeping they leave behind.

A hostile client meets these rules first, so each test pins the exact refusal (kind, reason,
Retry-After) a client acts on, and what admission remembers: the refusals (GET /v1/tx), the bad
signatures, the verified ids, the senders refused for now, and what is forwarded with which sidecar.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import node.admission as admission_mod
import node.tx.model as model
from node import clock
from node.admission import REFORWARD_S, Admission
from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.execution import build_block
from node.genesis import IssuerInfo, Params, init_home
from node.ipfs import blockstore
from node.ipfs.cid import Cid, cid_v1_raw
from node.ipfs.unixfs import import_bytes
from node.mempool import AdmissionError, Refusal, origin
from node.sidecar import SIDECAR_MAX, Item
from node.state import Code
from node.tx import DATA_TYPES, Grant, Profile, Read, Tx, TxError, Write
from node.tx.credential import issue
from node.tx.model import BAD_SIGNATURE
from node.validator import Validator
from node.wire import MAX_TX_BYTES, WireError, encode

CHAIN = "adm-test"
HR = DATA_TYPES["heart_rate"]
DAY_MS = 86_400_000
ISSUER = Identity.from_seed(b"adm-test issuer")
DUPLICATE = (Refusal.CONFLICT, "duplicate: transaction already pending", None)
SHARE = "rate limited: client 10.0.0.1 holds its share of the mempool (2 pending transactions)"
T = 1000.0  # a pinned monotonic clock, for the refused-for-now windows


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Validator]]:
    """Validators (constructed, never started) with the given genesis parameters, closed afterwards."""
    made: list[Validator] = []

    def _make(**params: float) -> Validator:
        (home,) = init_home(tmp_path / f"v{len(made)}", CHAIN, ["127.0.0.1:9000"], int(time.time() * 1000),
                            Params(**params), issuers=(IssuerInfo("org", ISSUER.public_key.hex()),))
        made.append(Validator(home))
        return made[-1]

    yield _make
    for v in made:
        v.close()


def _id(name: str) -> Identity:
    return Identity.from_seed(name.encode())


def _profile(ident: Identity, nonce: int = 1, credential_until: int | None = None) -> Tx:
    cred = None if credential_until is None else issue(ISSUER, CHAIN, ident.address, credential_until)
    return Tx.build(ident, CHAIN, nonce, Profile("n", "nurse", "ward", ident.box_public, cred))


def _run(ident: Identity, n: int) -> list[Tx]:
    """Nonces 1..n of one sender."""
    return Tx.build_batch(ident, CHAIN, 1, [Profile(f"p{k}", "nurse", "ward", ident.box_public) for k in range(n)])


def _write(ident: Identity, cid: bytes, size: int) -> Tx:
    return Tx.build(ident, CHAIN, 1, Write(HR, cid, size, 0, 1_000, 2_000))


def _bad_sig(tx: Tx, other: Tx) -> Tx:
    """`tx` carrying another transaction's signature: well formed, not signed by its sender."""
    return Tx.decode(encode([tx.payload, other.sig]), check_sig=False)


def _refused(r: bytes | AdmissionError) -> tuple[Refusal, str, float | None]:
    assert isinstance(r, AdmissionError), r
    return r.kind, r.reason, r.retry_after


def _items(txs: list[Tx]) -> list[Item]:
    return [(t.raw, None) for t in txs]


def _at(adm: Admission, items: list[Item], now: float, forwarded: bool = False) -> list[bytes | AdmissionError]:
    """submit_many_sync with the monotonic clock pinned at `now`."""
    return adm._admit_checked(adm._check_items(items, forwarded), forwarded, now)


def _rejections(v: Validator, reason: str) -> float:
    return v.metrics.registry.get_sample_value("medchain_tx_rejected_total", {"reason": reason}) or 0.0


def _commit(v: Validator, txs: list[Tx]) -> list[int]:
    """Execute and commit one block with the node's own code, as the committer does after PBFT; its
    transactions' result codes."""
    ex = build_block(v.pipeline.head_tip(), txs, v.chain_id, 0, 0, clock.now_ms())
    asyncio.run(v.committer.commit(ex.block, ex))
    return list(ex.codes)


def _on_verify(monkeypatch: pytest.MonkeyPatch, hook: Callable[[list], None]) -> None:
    """Call `hook(items)` before each of admission's batch signature checks."""
    real = admission_mod.verify_batch

    def spy(items: list) -> list[bool]:
        hook(items)
        return real(items)

    monkeypatch.setattr(admission_mod, "verify_batch", spy)


def test_a_bad_signature_is_refused_cached_and_every_signature_is_checked_once(
        make: Callable[..., Validator], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad signature is INVALID and remembered: sent again it costs a lookup, not a verification
    (a flood of one bad transaction is cheap). Good signatures are checked in one batch call per
    submission, never inline in the decode, and a transaction verified once is not verified again."""
    v = make()
    adm = v.admission
    batches: list[int] = []
    _on_verify(monkeypatch, lambda items: batches.append(len(items)))
    inline: list[bytes] = []  # signature checks made by the transaction decoder itself
    monkeypatch.setattr(model, "ecdsa", SimpleNamespace(**{**vars(ecdsa), "verify": lambda *a: inline.append(a[2])}))
    good1, good2 = _run(_id("sig"), 2)
    bad = _bad_sig(good1, good2)
    reason = f"invalid transaction: {BAD_SIGNATURE}"
    res = adm.submit_many_sync(_items([bad, good1]))
    assert _refused(res[0]) == (Refusal.INVALID, reason, None) and res[1] == good1.id
    assert list(adm.bad_sigs) == [bad.id] and dict(adm.rejected) == {bad.id: reason}
    assert bad.id not in adm.verified and good1.id in adm.verified and batches == [2]
    res = adm.submit_many_sync(_items([bad, good2]))  # the bad one: from the cache
    assert _refused(res[0]) == (Refusal.INVALID, reason, None) and res[1] == good2.id and batches == [2, 1]
    assert _refused(adm.submit_many_sync(_items([good1]))[0]) == DUPLICATE  # verified already: not again
    assert batches == [2, 1] and inline == []
    assert _rejections(v, "invalid transaction") == 2


def test_stateless_refusals_name_the_fault_and_record_the_id_when_there_is_one(make: Callable[..., Validator]) -> None:
    """Undecodable bytes, a wrong chain id: INVALID with the reason; the id is recorded for GET /v1/tx
    when the bytes could be a transaction (at most MAX_TX_BYTES); neither is a bad signature, so
    neither is cached as one. The rest of the batch is still admitted."""
    v = make()
    adm = v.admission
    alien = Tx.build(_id("alien"), "other-chain", 1, Profile("a", "nurse", "ward", bytes(32)))
    junk, at_max, over = b"\x93junk", b"\xff" * MAX_TX_BYTES, b"\xff" * (MAX_TX_BYTES + 1)
    why = {}
    for raw in (junk, at_max, over):
        with pytest.raises((TxError, WireError)) as exc:
            Tx.decode(raw, check_sig=False)
        why[raw] = f"invalid transaction: {exc.value}"
    ok = _profile(_id("fine"))
    res = adm.submit_many_sync([(junk, None), (alien.raw, None), (at_max, None), (over, None), (ok.raw, None)])
    wrong = f"wrong chain id: 'other-chain', this chain is {CHAIN!r}"
    assert [_refused(r) for r in res[:4]] == [(Refusal.INVALID, why[junk], None), (Refusal.INVALID, wrong, None),
                                              (Refusal.INVALID, why[at_max], None), (Refusal.INVALID, why[over], None)]
    assert res[4] == ok.id
    assert dict(adm.rejected) == {ecdsa.sha256(junk): why[junk], alien.id: wrong, ecdsa.sha256(at_max): why[at_max]}
    assert not adm.bad_sigs
    assert _rejections(v, "invalid transaction") == 3 and _rejections(v, "wrong chain id") == 1


def test_a_sidecar_must_be_exactly_the_blob_its_write_names(make: Callable[..., Validator]) -> None:
    """A sidecar of other bytes, of another size, or beside a transaction that is not a write is
    INVALID; the exact blob is admitted, waits in the pool with its write and is forwarded with it."""
    v = make()
    adm = v.admission
    adm.forwarding = True
    blob = bytes(range(100))
    cid = cid_v1_raw(blob)
    w, p = _write(_id("writer"), cid.to_bytes(), 100), _profile(_id("staff"))
    res = adm.submit_many_sync([(w.raw, bytes(100)), (w.raw, blob[:99]), (p.raw, blob), (w.raw, blob)])
    assert [_refused(r) for r in res[:3]] == [
        (Refusal.INVALID, f"invalid sidecar: sidecar does not hash to {cid}", None),
        (Refusal.INVALID, "invalid sidecar: sidecar is 99 bytes, the write says 100", None),
        (Refusal.INVALID, "invalid sidecar: a sidecar rides only with a data write", None)]
    assert res[3] == w.id
    assert dict(adm.rejected) == {p.id: "invalid sidecar: a sidecar rides only with a data write"}  # w got in
    assert not adm.bad_sigs
    assert v.mempool.sidecar(w.id) == blob and adm.take_forward() == [(w.raw, blob)] and adm.forward == []


def test_state_refusals_map_to_the_kind_a_client_acts_on(make: Callable[..., Validator]) -> None:
    """The state machine's codes: a grant to staff with no profile is UNPROCESSABLE, a read the
    patient did not grant FORBIDDEN, a credential not valid from a genesis issuer UNPROCESSABLE (no
    kind of its own); a valid credential passes (the genesis's issuers and the clock are used); a
    write whose CID is not a CIDv1 of sha2-256 is INVALID."""
    v = make()
    adm = v.admission
    patient, staff = _id("patient"), _id("staff")
    now = clock.now_ms()
    grant = Tx.build(patient, CHAIN, 1, Grant(staff.address, (HR,), 0, ()))
    read = Tx.build(staff, CHAIN, 1, Read(patient.address, HR, b"", 0, now))
    expired, valid = _profile(_id("nurse"), credential_until=now - 1), _profile(_id("doc"), credential_until=now + DAY_MS)
    # a write naming its blob by a CIDv0 (the same bytes as a CIDv1 dag-pb): signed, but not a write
    writer = _id("writer")
    payload = encode([model.VERSION, Write.kind, CHAIN, writer.public_key, 1, HR, b"\x12\x20" + bytes(32), 10, 0, 1, 2])
    raw = encode([payload, writer.sign(ecdsa.sha256(payload))])
    write = SimpleNamespace(id=ecdsa.sha256(raw), raw=raw)  # refused before it parses: known by its bytes' hash
    res = adm.submit_many_sync(_items([grant, read, expired, valid, write]))
    cred = "refused: invalid credential: not signed for this staff member and chain by an issuer in the genesis, or expired"
    want = {grant.id: (Refusal.UNPROCESSABLE, "refused: staff member has no registered profile", None),
            read.id: (Refusal.FORBIDDEN, "refused: access denied by the patient's policy", None),
            expired.id: (Refusal.UNPROCESSABLE, cred, None),
            write.id: (Refusal.INVALID, "invalid transaction: cid: a write names a binary CIDv1, raw or dag-pb, with a "
                                        "sha2-256 digest (36 bytes)", None)}
    assert [_refused(r) for r in res[:3]] + [_refused(res[4])] == list(want.values())
    assert res[3] == valid.id
    assert dict(adm.rejected) == {k: w[1] for k, w in want.items()}
    assert _rejections(v, "refused") == 3


def test_a_write_without_sidecar_needs_its_blob_held_here_with_its_size(make: Callable[..., Validator]) -> None:
    """No sidecar: the blob must have been uploaded here, with the size the write states. A raw blob
    (up to SIDECAR_MAX, the limit included) is then forwarded as the write's sidecar, so the other
    validators hold it at commit; a dag-pb blob is not (they fetch it over bitswap)."""
    v = make()
    adm = v.admission
    adm.forwarding = True
    missing = cid_v1_raw(b"never uploaded")
    short, _ = v.blobs.put_blob(b"s" * 100)
    big = b"b" * SIDECAR_MAX
    raw_cid, _ = v.blobs.put_blob(big)
    dag = b"d" * (262_144 + 1)  # two chunks of kubo's 256 KiB: a dag-pb root, though under SIDECAR_MAX
    dag_cid, _ = v.blobs.put_blob(dag, "kubo-cid-version-1")
    assert raw_cid == cid_v1_raw(big) and dag_cid.codec_name == "dag-pb"
    ws = [_write(_id(f"w{k}"), c.to_bytes(), n) for k, (c, n) in
          enumerate([(missing, 14), (short, 101), (raw_cid, len(big)), (dag_cid, len(dag))])]
    res = adm.submit_many_sync(_items(ws))
    assert [_refused(r) for r in res[:2]] == [
        (Refusal.UNPROCESSABLE, f"blob not held: send the ciphertext as the write's sidecar, or upload {missing} "
                                "(POST /v1/blobs) to this validator first", None),
        (Refusal.UNPROCESSABLE, f"size mismatch: blob {short} is 100 bytes, transaction says 101", None)]
    assert res[2:] == [ws[2].id, ws[3].id]
    assert adm.take_forward() == [(ws[2].raw, big), (ws[3].raw, None)]
    # the pool holds what is sent on with it (a re-forward, the censorship watch's send to the primary):
    # the held raw blob too, or a primary lacking it would refuse the bare write; a dag-pb one rides never
    assert v.mempool.sidecar(ws[2].id) == big and v.mempool.sidecar(ws[3].id) is None
    assert dict(adm.rejected) == {ws[0].id: _refused(res[0])[1], ws[1].id: _refused(res[1])[1]}
    assert _rejections(v, "blob not held") == 1


def test_an_upload_a_write_names_is_kept_for_a_grace_from_the_write_s_admission(
        make: Callable[..., Validator], monkeypatch) -> None:
    """A standalone upload is collected `upload_grace_s` after it arrived unless a committed write
    pins it. A write admitted near the end of that grace (or waiting in a busy pool) lost its blob
    before its commit (a crash-consistency review): admission restarts the grace."""
    clock = [1_000_000.0]
    monkeypatch.setattr(blockstore, "time", SimpleNamespace(time=lambda: clock[0]))
    v = make()
    data = b"d" * (SIDECAR_MAX + 1)  # too large to ride as a sidecar: it must stay in the store
    root, blocks = import_bytes(data, "helia-default")
    v.blobs.put_dags([(root, blocks.items(), len(data))], upload=True)
    clock[0] += 500
    w = _write(_id("late writer"), root.to_bytes(), len(data))
    assert v.admission.submit_many_sync(_items([w])) == [w.id]
    assert v.blobs.collect_uploads(600.0, now=clock[0] + 101) == 0 and v.blobs.get_blob(root) == data
    assert v.blobs.collect_uploads(600.0, now=clock[0] + 601) == 1  # no commit pinned it in time


def test_a_forwarded_write_of_one_raw_block_must_carry_its_sidecar(make: Callable[..., Validator]) -> None:
    """An honest entry validator forwards a raw-blob write with its sidecar: one without (a faulty
    peer dropped it) is refused unless the blob is held here, with the size the write states; a
    dag-pb write comes without and is
    admitted (repaired at commit). Forwarded transactions are never forwarded again."""
    v = make()
    adm = v.admission
    adm.forwarding = True
    blob = b"x" * 50
    held_cid, _ = v.blobs.put_blob(b"h" * 60)
    dag_cid = Cid(1, 0x70, cid_v1_raw(b"not here").multihash)
    wa, wb, wc = (_write(_id("fa"), cid_v1_raw(blob).to_bytes(), 50), _write(_id("fb"), held_cid.to_bytes(), 60),
                  _write(_id("fc"), dag_cid.to_bytes(), 5_000_000))
    reason = "blob not held: a forwarded write of one raw block must carry its sidecar"
    with origin("peer:1"):
        res = adm.submit_many_sync(_items([wa, wb, wc]), forwarded=True)
        assert _refused(res[0]) == (Refusal.UNPROCESSABLE, reason, None) and res[1:] == [wb.id, wc.id]
        assert adm.submit_many_sync([(wa.raw, blob)], forwarded=True) == [wa.id]
    assert v.mempool.sidecar(wa.id) == blob and v.mempool.sidecar(wb.id) == b"h" * 60  # held here: it rides on
    assert v.mempool.sidecar(wc.id) is None
    assert adm.forward == [] and adm.submitted_at == {} and not adm.rejected  # wa's refusal forgotten
    # a bare forward naming a blob held here with another size: refused, or an honest primary would
    # propose a write that no honest backup votes for (node/availability.py)
    wd = _write(_id("fd"), held_cid.to_bytes(), 61)
    with origin("peer:1"):
        (res,) = adm.submit_many_sync(_items([wd]), forwarded=True)
    assert _refused(res) == (Refusal.UNPROCESSABLE, f"size mismatch: blob {held_cid} is 60 bytes, transaction says 61", None)


def test_a_forwarded_body_with_its_blob_supersedes_a_pending_write_whose_blob_is_nowhere_here(
        make: Callable[..., Validator]) -> None:
    """A sender signed two bodies for one nonce: a dag-pb write whose blob nobody sent here (a
    byzantine validator forwards such writes to the primary, one after another) and one this
    validator can propose, which the backups hold. The one it can propose takes the nonce, with
    the first's later transactions withdrawn; else the backups, watching it left out of the
    primary's blocks, depose an honest primary for censorship (node/consensus/censor.py). A body
    no better (another bare write) is refused as before, and a client's never supersedes."""
    v = make()
    adm = v.admission
    who = _id("equivocating sender")
    nowhere = Cid(1, 0x70, cid_v1_raw(b"nobody holds this").multihash).to_bytes()
    bare = Tx.build(who, CHAIN, 1, Write(HR, nowhere, 5_000_000, 0, 1_000, 2_000))
    behind = Tx.build(who, CHAIN, 2, Profile("p", "nurse", "ward", who.box_public))
    other_bare = Tx.build(who, CHAIN, 1, Write(HR, Cid(1, 0x70, cid_v1_raw(b"nor this").multihash).to_bytes(),
                                                 5_000_000, 0, 1_000, 2_000))
    blob = b"b" * 40
    good = Tx.build(who, CHAIN, 1, Write(HR, cid_v1_raw(blob).to_bytes(), 40, 0, 1_000, 2_000))
    with origin("peer:1"):
        assert adm.submit_many_sync(_items([bare, behind]), forwarded=True) == [bare.id, behind.id]
        (r,) = adm.submit_many_sync(_items([other_bare]), forwarded=True)
        assert _refused(r)[1] == "nonce conflict: 1 already pending with another transaction"
    with origin("10.0.0.9"):  # a client: the pool's nonce rules as ever
        (r,) = adm.submit_many_sync([(good.raw, blob)])
        assert _refused(r)[0] is Refusal.CONFLICT and bare.id in v.mempool
    v.mempool.max_sidecar_bytes = 10  # the newcomer would not get in after all: nothing is displaced
    with origin("peer:2"):
        (r,) = adm.submit_many_sync([(good.raw, blob)], forwarded=True)
        assert _refused(r)[0] is Refusal.OVERLOADED and bare.id in v.mempool and behind.id in v.mempool
    v.mempool.max_sidecar_bytes = 1 << 20
    with origin("peer:2"):
        assert adm.submit_many_sync([(good.raw, blob)], forwarded=True) == [good.id]
    assert good.id in v.mempool and bare.id not in v.mempool and behind.id not in v.mempool
    assert adm.rejected[bare.id] == "superseded: another transaction of its nonce came with its blob"
    assert adm.rejected[behind.id] == "held back: nonce 1 of this sender was superseded"
    assert bare.id not in adm.pending_since and behind.id not in adm.pending_since


def test_client_and_forwarded_admissions_leave_their_own_bookkeeping(make: Callable[..., Validator]) -> None:
    """A client's transaction is timed for the commit-latency metric and, once the p2p adapter runs,
    queued for forwarding with its sidecar; a forwarded one is neither, and may run ahead of its
    sender's next nonce. Both are due for a re-forward REFORWARD_S after admission."""
    v = make()
    adm = v.admission
    c1, c2 = _run(_id("client"), 2)
    f2 = _run(_id("peer's"), 2)[1]  # nonce 2 of a sender with nothing pending: a forwarded batch reordered
    before = time.monotonic()
    with origin("1.2.3.4"):
        assert adm.submit_many_sync(_items([c1])) == [c1.id]
        assert adm.forward == []  # forwarding is off until the p2p adapter runs
        adm.forwarding = True
        assert adm.submit_many_sync(_items([c2])) == [c2.id]
    with origin("peer:1"):
        assert adm.submit_many_sync(_items([f2]), forwarded=True) == [f2.id]
    after = time.monotonic()
    assert adm.take_forward() == [(c2.raw, None)] and adm.forward == []
    assert set(adm.submitted_at) == {c1.id, c2.id}
    assert all(before <= adm.submitted_at[t] <= after for t in (c1.id, c2.id))
    assert set(adm.pending_since) == {c1.id, c2.id, f2.id}
    for t in (c1.id, c2.id):
        assert adm.pending_since[t] == adm.submitted_at[t] + REFORWARD_S
    assert before + REFORWARD_S <= adm.pending_since[f2.id] <= after + REFORWARD_S
    assert set(adm.verified) == {c1.id, c2.id, f2.id} and not adm.rejected
    assert set(v.mempool.origins) == {"1.2.3.4", "peer:1"}
    registry = v.metrics.registry
    assert registry.get_sample_value("medchain_tx_admitted_total") == 3
    assert registry.get_sample_value("medchain_mempool_transactions") == 3


def test_a_pending_transaction_sent_again_is_a_duplicate(make: Callable[..., Validator],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent again while pending: CONFLICT. A client's copy goes through the checks and is counted; a
    peer's re-forwarded copy costs a hash only (not counted), the rest of its batch still gets in,
    and a peer's batch is not counted as client work while it is verified (full())."""
    v = make()
    adm = v.admission
    p, q = _profile(_id("dup p")), _profile(_id("dup q"))
    assert adm.submit_many_sync(_items([p])) == [p.id]
    assert _refused(adm.submit_many_sync(_items([p]))[0]) == DUPLICATE
    assert _rejections(v, "duplicate") == 1
    assert _refused(adm.submit_many_sync(_items([p]), forwarded=True)[0]) == DUPLICATE
    assert _rejections(v, "duplicate") == 1
    checking: list[int] = []
    _on_verify(monkeypatch, lambda items: checking.append(adm.checking))
    res = asyncio.run(adm.submit_many(_items([p, q]), forwarded=True))
    assert _refused(res[0]) == DUPLICATE and res[1] == q.id
    assert checking == [0] and adm.checking == 0
    assert set(adm.submitted_at) == {p.id} and set(adm.pending_since) == {p.id, q.id}
    assert _rejections(v, "duplicate") == 1 and len(v.mempool) == 2


@pytest.mark.parametrize("forwarded", [False, True], ids=["client", "peer"])
def test_an_eviction_is_recorded_and_the_evicted_transaction_forgotten(make: Callable[..., Validator],
                                                                       forwarded: bool) -> None:
    """A full pool makes room in the origin holding the most: its newest sender's transaction is
    evicted, shows as refused ("evicted: ...") to GET /v1/tx, and is no longer timed or re-forwarded."""
    v = make(mempool_capacity=2, client_mempool_share=1.0)
    adm = v.admission
    x1, x2, n = (_profile(_id(f"evict {k}")) for k in ("x1", "x2", "new"))
    with origin("peer:1" if forwarded else "10.0.0.1"):
        assert adm.submit_many_sync(_items([x1, x2]), forwarded=forwarded) == [x1.id, x2.id]
    with origin("10.0.0.2"):
        assert adm.submit_many_sync(_items([n])) == [n.id]
    assert x2.id not in v.mempool and {x1.id, n.id} <= set(v.mempool.by_id)
    assert dict(adm.rejected) == {x2.id: "evicted: mempool full and its client or sender held the most pending "
                                         "transactions"}
    assert set(adm.submitted_at) == ({n.id} if forwarded else {x1.id, n.id})
    assert set(adm.pending_since) == {x1.id, n.id}
    assert _rejections(v, "evicted") == 1


def test_a_transaction_a_block_executed_without_its_nonce_leaves_the_pool_and_moves_no_run(
        make: Callable[..., Validator]) -> None:
    """A block may carry a transaction that fails there as a bad nonce (its predecessor is not in the
    block): it has its receipt now, so it can never commit (again it would be a duplicate), and it
    alone leaves the pool; its sender's run stays. A byzantine primary including it a second time
    (a duplicate) moved the pool's run past it, dropping the pending nonce 1 as superseded."""
    v = make()
    adm = v.admission
    s1, s2, s3 = _run(_id("gap"), 3)
    with origin("10.0.0.1"):
        assert adm.submit_many_sync(_items([s1, s2, s3])) == [s1.id, s2.id, s3.id]
    assert _commit(v, [s2]) == [Code.BAD_NONCE]
    assert s2.id not in v.mempool and s1.id in v.mempool and s3.id in v.mempool and s2.id not in adm.pending_since
    assert _commit(v, [s2]) == [Code.DUPLICATE]
    assert s1.id in v.mempool and s3.id in v.mempool and s1.id not in adm.rejected
    assert [t.id for t in v.mempool.batch(10)] == [s1.id]  # nonce 2 is a gap now: 3 waits behind it
    assert _commit(v, [s1]) == [Code.OK] and s1.id not in v.mempool and s3.id in v.mempool
    again = _profile(_id("gap"), 2)  # nonce 2 signed again (other bytes): the gap closes
    with origin("10.0.0.1"):
        assert adm.submit_many_sync(_items([again])) == [again.id]
    assert [t.id for t in v.mempool.batch(10)] == [again.id, s3.id]


def test_a_pool_behind_the_chain_catches_up_on_a_duplicate_and_never_watches_a_burned_transaction(
        make: Callable[..., Validator]) -> None:
    """A pool that missed commits (a state transfer passed them) may hold a transaction the chain has
    already executed: proposed again it executes as a duplicate, and its sender's run catches up with
    the chain's nonce (its next one is ready); one the chain executed as a bad nonce has its receipt
    and can never commit, so the censorship watch drops it instead of watching it for ever."""
    v = make()
    adm = v.admission
    s1, s2, s3 = _run(_id("behind"), 3)
    with origin("10.0.0.1"):
        assert adm.submit_many_sync(_items([s1, s2])) == [s1.id, s2.id]
    assert _commit(v, [s1]) == [Code.OK]
    v.mempool.discard(s2)  # the pool as if it had not seen that commit
    for t in (s1, s2):
        v.mempool.admit(t, 0, time.monotonic())
    assert _commit(v, [s1]) == [Code.DUPLICATE]
    assert s1.id not in v.mempool and [t.id for t in v.mempool.batch(10)] == [s2.id]
    assert _commit(v, [s3]) == [Code.BAD_NONCE] and s3.id not in v.mempool
    assert _commit(v, [s2]) == [Code.OK]
    v.mempool.admit(s3, 2, time.monotonic())  # again as if a transfer had passed its block: ready now
    assert adm.watch_candidate() is None and s3.id not in v.mempool


def test_a_pending_transaction_the_chain_passed_is_told_superseded_when_its_sender_sends_again(
        make: Callable[..., Validator]) -> None:
    """The pool missed the commit of another body for nonce 1 (as a state transfer passes blocks): the
    sender's next admission settles its run with the chain's nonce, and the transaction it drops is
    told superseded (its client polled "unknown" before)."""
    v = make()
    adm = v.admission
    ident = _id("passed")
    mine, other = _profile(ident), Tx.build(ident, CHAIN, 1, Profile("other", "nurse", "ward", ident.box_public))
    assert _commit(v, [other]) == [Code.OK]
    v.mempool.admit(mine, 0, time.monotonic())  # as if the pool had not seen that commit
    nxt = _profile(ident, 2)
    with origin("10.0.0.1"):
        assert adm.submit_many_sync(_items([nxt])) == [nxt.id]
    assert mine.id not in v.mempool and adm.rejected[mine.id].startswith("superseded: its nonce was committed")
    assert v.committer.tx_status(mine.id)["status"] == "rejected"


def test_the_watch_is_told_each_block_transactions_sender_and_when_the_pool_placed_it(
        make: Callable[..., Validator]) -> None:
    """Admission.placed_age_ms, the censorship watch's question: by sender, so one placed here whose
    newest transaction is not admitted yet still holds its place; an unknown sender, or bytes that
    are no transaction, have none."""
    v = make()
    s1, s2 = _run(_id("placed"), 2)
    with origin("10.0.0.1"):
        assert v.admission.submit_many_sync(_items([s1])) == [s1.id]
    for raw in (s1.raw, s2.raw):
        who, age = v.admission.placed_age_ms(raw)
        assert who == s1.address and age is not None and 0 <= age < 60_000
    stranger = _profile(_id("placed stranger"))
    assert v.admission.placed_age_ms(stranger.raw) == (stranger.address, None)
    assert v.admission.placed_age_ms(b"junk") == (b"junk", None)


def test_the_driver_answers_the_watch_with_places_before_the_commits_a_primary_had_in_flight(tmp_path: Path) -> None:
    """A backup of four (constructed, never started): its watch asks the driver for a block's sender
    and its place as it was when the primary could propose that block. Sender s committed nonce 1 in
    block h and waits with nonce 2: for block h + 1 (proposed while h was in flight) its place is the
    one it took on arriving; for block h + PIPELINE, the one h's commit gave it."""
    from node.validator import PIPELINE
    from tests.consensus_sim import make_block

    homes = init_home(tmp_path / "net", CHAIN, [f"127.0.0.1:{9000 + k}" for k in range(4)], int(time.time() * 1000),
                      Params(), p2p=[f"127.0.0.1:{10000 + k}" for k in range(4)])
    v = Validator(homes[1])
    try:
        ages = v.replica.censor.placed_ages if v.replica.censor is not None else None
        assert ages is not None
        for k in range(6):  # a chain some blocks long: heights below the pipeline's reach exist
            assert _commit(v, [_profile(_id(f"earlier {k}"))]) == [Code.OK]
        s1, s2 = _run(_id("pipelined"), 2)
        with origin("10.0.0.1"):
            assert v.admission.submit_many_sync(_items([s1, s2])) == [s1.id, s2.id]
        time.sleep(0.05)
        assert _commit(v, [s1]) == [Code.OK]
        h = v.ledger.head().height
        block = make_block(h + 1, txs=[s2.raw])  # not executed here: judged by its bytes
        [(who, before)] = ages(block, h + 1)
        [(who_after, after)] = ages(block, h + PIPELINE)
        assert who == who_after == s1.address and before is not None and after is not None
        assert before >= after + 40  # arrived 50 ms before the commit moved it
        # executed here: one that did not take its nonce has no place (no honest batch holds one)
        s3 = _run(_id("pipelined"), 3)[2]
        ex = build_block(v.pipeline.head_tip(), [s3, s2], v.chain_id, 0, 0, clock.now_ms())
        assert list(ex.codes) == [Code.BAD_NONCE, Code.OK]
        [(w3, a3), (w2, a2)] = v.admission.placed_ages_ms(ex.block, ex, h)
        assert (w3, a3) == (s1.address, None) and w2 == s1.address and a2 is not None
    finally:
        v.close()


def test_a_nonce_refused_for_now_holds_back_the_senders_later_ones_until_its_window_ends(
        make: Callable[..., Validator]) -> None:
    """Nonce 3 refused as rate limited: nonce 4 behind it is refused the same way, with the same
    Retry-After (not a 409 the client would take as final). The hold lasts twice the Retry-After
    from the latest refusal of that nonce; a later nonce refused for now (a peer's, ahead) does not
    replace it until it ends; at its end a later nonce gets the plain 409."""
    v = make(mempool_capacity=4, client_mempool_share=0.5)  # a client origin holds at most 2
    adm = v.admission
    a = _id("held")
    run = _run(a, 5)
    with origin("10.0.0.1"):
        res = _at(adm, _items(run[:4]), T)
    assert res[:2] == [run[0].id, run[1].id]
    held = f"rate limited: held back, nonce 3 of this sender was refused first ({SHARE})"
    assert [_refused(r) for r in res[2:]] == [(Refusal.RATE_LIMITED, SHARE, 1.0), (Refusal.RATE_LIMITED, held, 1.0)]
    assert adm.refused_for_now[a.address][:2] == (3, T + 2.0) and adm.refused_for_now[a.address][2] is res[2]
    assert dict(adm.rejected) == {run[2].id: SHARE, run[3].id: held}
    with origin("10.0.0.1"):
        again = _at(adm, _items(run[2:3]), T + 1)[0]
    assert _refused(again) == (Refusal.RATE_LIMITED, SHARE, 1.0)
    assert adm.refused_for_now[a.address][:2] == (3, T + 3.0) and adm.refused_for_now[a.address][2] is again
    others = _run(_id("peer sender"), 1) + _run(_id("peer sender 2"), 1)
    with origin("peer:1"):  # the pool fills; then a peer's nonce 5 (ahead, as forwarded may be) is refused too
        assert _at(adm, _items(others), T + 1, forwarded=True) == [t.id for t in others]
        ahead = _at(adm, _items(run[4:]), T + 1, forwarded=True)[0]
    assert _refused(ahead) == (Refusal.RATE_LIMITED, "mempool full: this sender holds the most pending transactions", 1.0)
    assert adm.refused_for_now[a.address][:2] == (3, T + 3.0)  # still nonce 3's hold
    with origin("10.0.0.1"):
        late = _at(adm, _items(run[3:4]), T + 3.0)[0]  # the hold's last instant has passed
    assert _refused(late) == (Refusal.CONFLICT, "nonce out of order: got 4, expected 3", None)
    with origin("peer:1"):  # nonce 3's hold has ended: nonce 5's refusal is remembered instead
        assert _refused(_at(adm, _items(run[4:]), T + 3.0, forwarded=True)[0]) == _refused(ahead)
    assert adm.refused_for_now[a.address][:2] == (5, T + 5.0)


def test_past_the_backlog_bound_a_client_is_told_the_backlogs_retry_after(
        make: Callable[..., Validator], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the backlog bound the refusal is OVERLOADED with the backlog's Retry-After (half of
    max_queue_s: 3 s here), not the pool's 1 s, and so is the later nonce held back behind it, for
    twice that. Once the refused nonce gets in (a peer's batch, not bounded), the hold and its
    refusal end. full() refuses a whole client batch while the verifier holds the bound."""
    monkeypatch.setenv("MEDCHAIN_MAX_QUEUE_S", "6")
    v = make(block_max_txs=1, mempool_capacity=10)  # the bound: two blocks of one
    adm = v.admission
    d = _id("overloaded")
    run = _run(d, 4)
    with origin("10.0.0.1"):
        res = _at(adm, _items(run), T)
    first = ("overloaded: 2 transactions pending, the 2 this validator takes at the chain's current rate: "
             "retry later or elsewhere")
    held = f"overloaded: held back, nonce 3 of this sender was refused first ({first})"
    assert res[:2] == [run[0].id, run[1].id]
    assert [_refused(r) for r in res[2:]] == [(Refusal.OVERLOADED, first, 3.0), (Refusal.OVERLOADED, held, 3.0)]
    assert adm.refused_for_now[d.address][:2] == (3, T + 6.0)
    with origin("peer:1"):
        assert _at(adm, _items(run[2:3]), T, forwarded=True) == [run[2].id]
    assert d.address not in adm.refused_for_now and dict(adm.rejected) == {run[3].id: held}
    assert _commit(v, []) == []  # the backlog has measured a commit: its bound now reads the clock
    assert adm.checking == 0 and adm.full() is None
    adm.checking = 1
    assert adm.full() is None
    adm.checking = 2
    busy = ("overloaded: 2 client transactions are being verified, the 2 this validator takes at the chain's "
            "current rate: retry later or elsewhere")
    assert _refused(adm.full()) == (Refusal.OVERLOADED, busy, 3.0) and _refused(adm.full())[1] == busy
    assert v.backlog.refused == 2 and _rejections(v, "overloaded") == 2 + 2
    assert dict(adm.rejected) == {run[3].id: held}  # a refused body has no id


def test_committed_state_replays_and_a_break_glass_read_over_its_limit(make: Callable[..., Validator]) -> None:
    """A transaction already on the ledger is a CONFLICT (replay); the state checks read the committed
    state (a grant to staff whose profile is on chain, the committed nonce) and the clock (an expired
    grant). An emergency read past a limit of 0 is FORBIDDEN (403: no wait lifts it, and a 429 had
    clients retrying it for a minute), and
    the reader's next nonce is not held back behind it: it is out of order, and the 409 names the
    nonce the pool takes (a client reuses it for its next transaction)."""
    v = make(break_glass_per_staff=0)
    adm = v.admission
    staff, patient = _id("replay staff"), _id("replay patient")
    prof = _profile(staff, credential_until=clock.now_ms() + DAY_MS)
    assert _commit(v, [prof]) == [0]
    assert adm.committed_nonce(staff.address) == 1 and adm.committed_nonce(patient.address) == 0
    replay = "duplicate: transaction already committed (replay)"
    assert _refused(adm.submit_many_sync(_items([prof]))[0]) == (Refusal.CONFLICT, replay, None)
    ok, old = Tx.build_batch(patient, CHAIN, 1, [Grant(staff.address, (HR,), 0, ()), Grant(staff.address, (HR,), 1, ())])
    res = adm.submit_many_sync(_items([ok, old]))
    assert res[0] == ok.id and _refused(res[1]) == (Refusal.UNPROCESSABLE, "refused: invalid grant", None)
    assert dict(adm.rejected) == {prof.id: replay, old.id: "refused: invalid grant"}
    r2 = Tx.build(staff, CHAIN, 2, Read(patient.address, HR, b"", 0, clock.now_ms(), "ETREAT"))
    r3 = _profile(staff, 3)  # passes the state checks: only its nonce is out of order
    res = _at(adm, _items([r2, r3]), T)
    assert [_refused(r) for r in res] == [
        (Refusal.FORBIDDEN, LIMIT + " for good (a limit of 0)", None),
        (Refusal.CONFLICT, "nonce out of order: got 3, expected 2", None)]
    assert staff.address not in adm.refused_for_now  # nothing held back behind it


LIMIT = ("refused: break-glass refused: an emergency-read limit (of the staff member, their credential's "
         "issuer or the patient) is reached")


def test_an_emergency_read_over_its_daily_limit_says_when_its_window_ends(make: Callable[..., Validator]) -> None:
    """One emergency read a day: the second is refused (429) with a Retry-After of the time left in
    the window (a day, counted from the first read's block), and the reader's other transactions go
    on at once: a limit of the chain's state is not a load to wait out in seconds."""
    v = make(break_glass_per_staff=1)
    adm = v.admission
    staff, patient = _id("window staff"), _id("window patient")
    assert _commit(v, [_profile(staff, credential_until=clock.now_ms() + 2 * DAY_MS)]) == [0]
    first = Tx.build(staff, CHAIN, 2, Read(patient.address, HR, b"", 0, clock.now_ms(), "ETREAT"))
    assert _commit(v, [first]) == [0]
    second = Tx.build(staff, CHAIN, 3, Read(patient.address, HR, b"", 0, clock.now_ms(), "ETREAT"))
    other = _profile(staff, 4)
    res = _at(adm, _items([second, other]), T)
    kind, reason, retry = _refused(res[0])
    assert kind is Refusal.RATE_LIMITED and retry is not None and 86_300 <= retry <= 86_400, (reason, retry)
    assert reason == f"{LIMIT} until its window ends in {int(retry)} s"
    assert _refused(res[1]) == (Refusal.CONFLICT, "nonce out of order: got 4, expected 3", None)
    assert staff.address not in adm.refused_for_now
    assert _at(adm, _items([_profile(staff, 3)]), T + 0.1)[0] == _profile(staff, 3).id  # nonce 3, at once


def test_a_batch_is_checked_against_one_snapshot_of_the_ledger(make: Callable[..., Validator],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A block may commit on the worker thread while a batch is admitted on the loop: the batch's
    nonces are read from the snapshot its other checks read, not from a newer ledger."""
    v = make()
    s1 = _profile(_id("snapshot"))
    ex = build_block(v.pipeline.head_tip(), [s1], CHAIN, 0, 0, clock.now_ms())
    real = admission_mod.check_tx

    def commit_meanwhile(*args: object) -> int:
        if v.ledger.head().height == 0:
            writer = threading.Thread(target=v.committer.write, args=(ex.block, ex, [], []))
            writer.start()
            writer.join()
        return real(*args)

    monkeypatch.setattr(admission_mod, "check_tx", commit_meanwhile)
    assert v.admission.submit_many_sync(_items([s1])) == [s1.id]  # nonce 1 is next, in its snapshot
    assert v.ledger.head().height == 1 and v.admission.committed_nonce(s1.address) == 1


def test_every_cache_is_bounded_oldest_out(make: Callable[..., Validator]) -> None:
    """Memory stays flat under a flood: the verified ids, bad signatures, refusals and senders refused
    for now each hold exactly their bound, the oldest going first."""
    adm = make(mempool_capacity=4, client_mempool_share=0.5).admission
    held = AdmissionError(Refusal.RATE_LIMITED, "rate limited: old", 1.0)
    m = admission_mod  # the bounds, and per round: 3 verified, 1 bad signature, 2 refusals, 1 sender held
    caches = {"verified": (adm.verified, m._VERIFIED_CACHE, 3, None), "bad_sigs": (adm.bad_sigs, m._BAD_SIG_CACHE, 1, None),
              "rejected": (adm.rejected, m._REJECTED_CACHE, 2, "old"),
              "refused_for_now": (adm.refused_for_now, m._REFUSED_FOR_NOW_CACHE, 1, (1, 0.0, held))}
    for cache, bound, per_round, value in caches.values():  # one round's entries short of the bound
        cache.update((k.to_bytes(32, "big"), value) for k in range(bound - per_round))
    for r in range(2):  # a bad signature; nonces 1-2 admitted, 3 refused for now (the client's share)
        sender = _id(f"flood {r}")
        run = _run(sender, 3)
        bad = _bad_sig(run[0], run[1])
        with origin(f"10.0.0.{r}"):
            res = adm.submit_many_sync(_items([bad, *run]))
        assert res[2] == run[1].id and _refused(res[3])[0] is Refusal.RATE_LIMITED
        newest = {"verified": [t.id for t in run], "bad_sigs": [bad.id], "rejected": [bad.id, run[2].id],
                  "refused_for_now": [sender.address]}
        for name, (cache, bound, per_round, _) in caches.items():
            assert len(cache) == bound, name
            assert all((k.to_bytes(32, "big") in cache) == (r == 0) for k in range(per_round)), name
            assert list(cache)[-per_round:] == newest[name], name


def test_one_fifo_verifier_thread_keeps_submission_order(make: Callable[..., Validator],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches in flight at once are verified one after the other on the one "verify" thread,
    so they are admitted in submission order (nonce 1, then 2) however long the first takes; the
    client transactions being verified are counted while they are (full()) and not after."""
    adm = make().admission
    t1, t2 = _run(_id("fifo"), 2)
    gate = threading.Event()
    seen: list[list] = []

    def slow_first(items: list) -> None:
        seen.append([threading.current_thread().name, None])
        if len(seen) == 1:
            assert gate.wait(10)
            seen[0][1] = adm.checking  # both batches are taken on by now

    _on_verify(monkeypatch, slow_first)

    async def both() -> list:
        async def open_gate() -> None:
            await asyncio.sleep(0)  # both batches are submitted by now
            gate.set()
        return await asyncio.gather(adm.submit_many(_items([t1])), adm.submit_many(_items([t2])), open_gate())

    r1, r2, _ = asyncio.run(both())
    assert (r1, r2) == ([t1.id], [t2.id])
    assert seen == [["verify_0", 2], ["verify_0", None]] and adm.checking == 0


def test_a_transaction_superseded_by_another_body_of_its_nonce_is_forgotten_everywhere(
        make: Callable[..., Validator]) -> None:
    """A sender's nonce 1 is admitted here with one body and commits with another (sent to another
    validator): the pool drops ours, and so must the latency and re-forward bookkeeping, on every
    validator, the primary too (it kept both for ever: ~150 bytes per such pair, without bound)."""
    v = make()
    adm = v.admission
    sender = _id("superseded")
    mine, theirs = _profile(sender), Tx.build(sender, CHAIN, 1, Profile("other", "nurse", "ward", sender.box_public))
    assert _at(adm, _items([mine]), T) == [mine.id]
    assert mine.id in adm.submitted_at and mine.id in adm.pending_since
    assert _commit(v, [theirs]) == [0]
    assert mine.id not in v.mempool
    assert v.replica.is_primary  # the one validator: the sweep must not be a backup's alone
    v.forwarder.reforward(time.monotonic())
    assert mine.id not in adm.submitted_at and mine.id not in adm.pending_since


def test_forwards_that_wait_behind_a_nonce_gap_expire_and_the_rest_stay(make) -> None:
    """A byzantine validator can forward, from keys of its own, transactions ahead of nonces it never
    sends: they could not execute and held pool room until evicted. After GAP_MAX_S they go (with
    a status saying why); a sender whose next nonce is here, or whose gap the chain closed with a
    block this pool never held (its base is settled first), keeps its transactions."""
    from node.admission import GAP_MAX_S

    v = make()
    adm = v.admission
    gapped, ready, closed = _id("gapped"), _id("ready"), _id("closed by a block")
    g3, g4 = _profile(gapped, 3), _profile(gapped, 4)
    r1, c1, c2 = _profile(ready, 1), _profile(closed, 1), _profile(closed, 2)
    assert _at(adm, _items([g3, g4, r1, c2]), T, forwarded=True) == [g3.id, g4.id, r1.id, c2.id]
    assert _commit(v, [c1]) == [0]  # the chain takes closed's nonce 1 from elsewhere
    assert adm.expire_gapped(T + GAP_MAX_S - 1) == 0  # not yet
    assert adm.expire_gapped(T + GAP_MAX_S + 1) == 2
    assert g3.id not in v.mempool and g4.id not in v.mempool
    assert r1.id in v.mempool and c2.id in v.mempool
    st = v.tx_status(g3.id)
    assert st["status"] == "rejected" and "behind a nonce gap: nonce 1 of this sender never came" in st["reason"]
    assert adm.expire_gapped(T + 10 * GAP_MAX_S) == 0  # the others stay however long
