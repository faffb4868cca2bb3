"""The replicated state machine: policy, epochs, nonces, audit and determinism over a dict-backed state."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.state import CODES, OK, Code, Overlay, apply_block, check_tx, genesis_state_root, keys, smt
from node.state.machine import apply_tx, read_allowed
from node.state.records import BlobRec, GrantRec, PolicyRec
from node.state.rules import Rules
from node.tx import DATA_TYPES, Grant, Policy, Profile, Read, SealedKey, Tx, Write
from node.tx.credential import issue
from node.wire import decode

CHAIN = "state-test"
T0 = 1_700_000_000_000
HR, BP, TEMP, GLU = (DATA_TYPES[n] for n in ("heart_rate", "blood_pressure", "body_temperature", "glucose"))

PAT = Identity.from_seed(b"patient")
PAT2 = Identity.from_seed(b"patient-2")
DOC = Identity.from_seed(b"doctor")
NURSE = Identity.from_seed(b"nurse")
ISSUER = Identity.from_seed(b"hospital issuer")  # the one credential issuer of these tests' genesis
RULES = Rules(frozenset({ISSUER.public_key}))


def cid(name: str) -> bytes:
    return b"\x01\x55\x12\x20" + ecdsa.sha256(name.encode())


class Chain:
    """A dict-backed state with its head, applying blocks exactly as a validator would."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.root = genesis_state_root(CHAIN, [b"v0"])
        self.tree: dict[bytes, bytes] = {}
        self.height = 0
        self.nonces: dict[bytes, int] = {}
        self.rules = RULES

    def tx(self, ident: Identity, body, nonce: int | None = None) -> Tx:
        if nonce is None:
            nonce = self.nonces.get(ident.address, 0) + 1
            self.nonces[ident.address] = nonce
        return Tx.build(ident, CHAIN, nonce, body)

    def apply(self, txs, time_ms: int = T0) -> list[int]:
        self.height += 1
        res = apply_block(self.state.get, txs, self.height, time_ms, self.tree.get, self.rules)
        self.state.update(res.writes)
        self.tree.update(res.nodes)
        self.root = res.state_root
        return res.codes

    def run(self, ident: Identity, body, time_ms: int = T0) -> int:
        (code,) = self.apply([self.tx(ident, body)], time_ms)
        return code

    def obj(self, key: bytes):
        v = self.state.get(key)
        return None if v is None else decode(v)

    def epoch(self, patient: Identity, dtype: int) -> int:
        return self.obj(keys.epoch(patient.address, dtype)) or 0

    def audits(self, patient: Identity) -> list:
        prefix = b"a" + patient.address
        return [decode(v) for k, v in sorted(self.state.items()) if k.startswith(prefix)]

    # shorthands
    def profile(self, ident: Identity, name: str = "Dr X") -> int:
        return self.run(ident, Profile(name, "physician", "General", ident.box_public))

    def clinician(self, ident: Identity, issuer: Identity = ISSUER, until_ms: int = T0 + 10**12, t: int = T0) -> int:
        """A profile with a credential of `issuer` (by default the genesis's): one who may break the glass."""
        cred = issue(issuer, CHAIN, ident.address, until_ms)
        return self.run(ident, Profile("Dr E", "emergency physician", "General", ident.box_public, cred), t)

    def grant(self, patient: Identity, staff: Identity, types, expiry_ms: int = 0, sealed=(), t: int = T0) -> int:
        return self.run(patient, Grant(staff.address, tuple(sorted(types)), expiry_ms, tuple(sealed)), t)

    def write(self, patient: Identity, dtype: int, name: str, epoch: int = 0, t_start: int = T0 - 60_000,
              t: int = T0) -> int:
        return self.run(patient, Write(dtype, cid(name), 1000, epoch, t_start, t_start + 60_000), t)

    def read(self, reader: Identity, patient: Identity, dtype: int, name: str | None = None, t: int = T0) -> int:
        return self.run(reader, Read(patient.address, dtype, cid(name) if name else b"", 0, T0), t)


@pytest.fixture
def chain() -> Chain:
    c = Chain()
    assert c.profile(DOC) == OK
    return c


def test_profile_registration_and_update():
    c = Chain()
    assert c.obj(keys.profile(DOC.address)) is None
    assert c.profile(DOC, "Dr A") == OK
    p = c.obj(keys.profile(DOC.address))
    assert p[:4] == ["Dr A", "physician", "General", DOC.box_public]
    assert p[4] == DOC.public_key and p[5] == c.height
    assert c.profile(DOC, "Dr B") == OK
    assert c.obj(keys.profile(DOC.address))[0] == "Dr B"
    assert c.obj(keys.nonce(DOC.address)) == 2


def test_grant_requires_staff_profile():
    c = Chain()
    assert c.grant(PAT, NURSE, [HR]) == 2
    assert c.obj(keys.grant(PAT.address, NURSE.address)) is None
    assert c.obj(keys.nonce(PAT.address)) == 1  # a refused tx still consumes its nonce
    assert c.profile(NURSE) == OK
    assert c.grant(PAT, NURSE, [HR]) == OK
    g = c.obj(keys.grant(PAT.address, NURSE.address))
    assert g[0] == [HR] and g[1] == 0 and g[2] == c.height


def test_self_grant_refused(chain):
    assert chain.profile(PAT) == OK  # even with a profile, a patient cannot grant to themself
    assert chain.grant(PAT, PAT, [HR]) == 7
    assert chain.obj(keys.grant(PAT.address, PAT.address)) is None


@pytest.mark.parametrize("expiry", [T0 - 1, T0])
def test_grant_expiry_not_in_future_refused(chain, expiry):
    assert chain.grant(PAT, DOC, [HR], expiry_ms=expiry) == 7
    assert chain.obj(keys.grant(PAT.address, DOC.address)) is None
    assert chain.grant(PAT, DOC, [HR], expiry_ms=T0 + 1) == OK


def test_expiry_enforced_at_read_time(chain):
    assert chain.write(PAT, HR, "w1") == OK
    assert chain.grant(PAT, DOC, [HR], expiry_ms=T0 + 1000) == OK
    assert chain.read(DOC, PAT, HR, "w1", t=T0 + 999) == OK
    assert chain.read(DOC, PAT, HR, "w1", t=T0 + 1000) == 3
    assert chain.read(DOC, PAT, HR, None, t=T0 + 50_000) == 3
    view = Overlay(chain.state.get)
    assert read_allowed(view, DOC.address, PAT.address, HR, T0 + 999)
    assert not read_allowed(view, DOC.address, PAT.address, HR, T0 + 1000)
    # expiry 0 means never
    assert chain.grant(PAT, DOC, [HR], expiry_ms=0, t=T0 + 2000) == OK
    assert chain.read(DOC, PAT, HR, "w1", t=T0 + 10**12) == OK


def test_read_only_granted_types(chain):
    assert chain.profile(NURSE) == OK
    assert chain.write(PAT, HR, "hr") == OK
    assert chain.write(PAT, BP, "bp") == OK
    assert chain.read(DOC, PAT, HR, "hr") == 3  # no grant yet
    assert chain.grant(PAT, DOC, [HR]) == OK
    assert chain.read(DOC, PAT, HR, "hr") == OK
    assert chain.read(DOC, PAT, HR) == OK  # range read
    assert chain.read(DOC, PAT, BP, "bp") == 3
    assert chain.read(DOC, PAT, BP) == 3
    assert chain.read(NURSE, PAT, HR, "hr") == 3  # a grant to one staff member is not a grant to another
    assert chain.read(DOC, PAT2, HR) == 3  # nor a grant by another patient


def test_patient_reads_own_data():
    c = Chain()
    assert c.write(PAT, HR, "own") == OK
    assert c.read(PAT, PAT, HR, "own") == OK
    assert c.read(PAT, PAT, HR) == OK
    assert c.read(PAT, PAT, GLU) == OK  # no grant needed for any own type


def test_change_of_grant(chain):
    assert chain.grant(PAT, DOC, [HR, BP]) == OK
    assert chain.read(DOC, PAT, HR) == OK
    assert chain.read(DOC, PAT, TEMP) == 3
    assert chain.grant(PAT, DOC, [BP, TEMP]) == OK
    assert chain.read(DOC, PAT, HR) == 3
    assert chain.read(DOC, PAT, BP) == OK
    assert chain.read(DOC, PAT, TEMP) == OK
    assert chain.obj(keys.grant(PAT.address, DOC.address))[0] == [BP, TEMP]
    assert [chain.epoch(PAT, t) for t in (HR, BP, TEMP, GLU)] == [1, 0, 0, 0]


def test_revoke_bumps_epoch_of_removed_types_only(chain):
    assert chain.profile(NURSE) == OK
    assert chain.grant(PAT, DOC, [HR, BP]) == OK
    assert chain.grant(PAT, NURSE, [GLU]) == OK
    assert chain.grant(PAT2, DOC, [HR]) == OK
    assert chain.grant(PAT, DOC, []) == OK  # revoke
    assert chain.obj(keys.grant(PAT.address, DOC.address))[0] == []
    assert {t: chain.epoch(PAT, t) for t in DATA_TYPES.values()} == {1: 1, 2: 1, 3: 0, 4: 0, 5: 0}
    assert chain.epoch(PAT2, HR) == 0  # another patient's epochs are untouched
    assert chain.read(DOC, PAT, HR) == 3
    assert chain.read(NURSE, PAT, GLU) == OK
    # revoking again (nothing left to remove) and revoking a never-granted staff member bump nothing
    assert chain.grant(PAT, DOC, []) == OK
    assert chain.profile(Identity.from_seed(b"other staff")) == OK
    assert chain.grant(PAT, Identity.from_seed(b"other staff"), []) == OK
    assert chain.epoch(PAT, HR) == 1 and chain.epoch(PAT, GLU) == 0


def test_an_expired_grant_ends_its_key_epoch_like_a_revoke(chain):
    """A grantee keeps the keys it was sealed; once its grant expires, nothing more may be written
    under that epoch (KEY_EXPIRED) until a revoke moves the type to an epoch it never held."""
    assert chain.profile(NURSE) == OK
    assert chain.grant(PAT, DOC, [HR, BP], expiry_ms=T0 + 1000) == OK
    assert chain.grant(PAT, NURSE, [HR]) == OK  # no expiry: never blocks a write
    assert chain.write(PAT, HR, "before", t=T0 + 999) == OK
    assert chain.write(PAT, HR, "after", t=T0 + 1000) == 12 == Code.KEY_EXPIRED
    assert chain.write(PAT, BP, "after-bp", t=T0 + 5000) == 12
    assert chain.write(PAT, GLU, "glucose", t=T0 + 5000) == OK  # a type the expired grant never held
    assert chain.obj(keys.blob(cid("after"))) is None
    # the patient extends the grant: the grantee holds the epoch until the new expiry
    assert chain.grant(PAT, DOC, [HR, BP], expiry_ms=T0 + 9000, t=T0 + 5000) == OK
    assert chain.write(PAT, HR, "extended", t=T0 + 8999) == OK
    assert chain.write(PAT, HR, "extended-late", t=T0 + 9000) == 12
    # the revoke moves both types to epoch 1, held by nobody with an expiry
    assert chain.grant(PAT, DOC, [], t=T0 + 9000) == OK
    assert chain.epoch(PAT, HR) == chain.epoch(PAT, BP) == 1
    assert chain.write(PAT, HR, "rotated", epoch=1, t=T0 + 9001) == OK
    assert chain.write(PAT, BP, "rotated-bp", epoch=1, t=T0 + 9001) == OK
    # a grant that can expire again, then made lasting (expiry 0): it no longer blocks
    assert chain.grant(PAT, NURSE, [HR], expiry_ms=T0 + 10_000, t=T0 + 9001) == OK
    assert chain.grant(PAT, NURSE, [HR], expiry_ms=0, t=T0 + 9002) == OK
    assert chain.write(PAT, HR, "lasting", epoch=1, t=T0 + 20_000) == OK
    assert chain.obj(keys.expiring(PAT.address, HR)) == []


def test_write_with_stale_epoch_refused(chain):
    assert chain.write(PAT, HR, "e0") == OK
    assert chain.grant(PAT, DOC, [HR]) == OK
    assert chain.grant(PAT, DOC, []) == OK
    assert chain.write(PAT, HR, "stale", epoch=0) == 5
    assert chain.obj(keys.blob(cid("stale"))) is None
    assert chain.write(PAT, HR, "future", epoch=2) == 5
    assert chain.write(PAT, HR, "fresh", epoch=1) == OK
    assert chain.write(PAT, BP, "bp", epoch=0) == OK  # other types stay at epoch 0
    blob = chain.obj(keys.blob(cid("fresh")))
    assert blob[:3] == [PAT.address, HR, 1]
    assert chain.state[keys.data_index(PAT.address, HR, T0 - 60_000, cid("fresh"))] == b""  # the key says it all


def test_duplicate_cid_refused(chain):
    assert chain.write(PAT, HR, "dup") == OK
    assert chain.write(PAT, HR, "dup") == 6
    assert chain.write(PAT2, HR, "dup") == 6  # a CID belongs to one record, whoever tries again
    assert chain.obj(keys.blob(cid("dup")))[0] == PAT.address
    # within one block: the second write sees the first through the overlay
    codes = chain.apply([chain.tx(PAT, Write(BP, cid("same"), 1, 0, T0, T0)),
                         chain.tx(PAT2, Write(BP, cid("same"), 1, 0, T0, T0))])
    assert codes == [OK, 6]


def test_the_twin_of_a_recorded_cid_is_refused(chain):
    """The same digest under the other codec (the raw CID of another patient's dag-pb root) named the
    same bytes in every block store, which lists a blob by digest: a validator fetching the twin for
    a vote relisted the honest blob as raw and stopped holding it (a review). Recorded either way
    round, its twin is refused."""
    pb = b"\x01\x70" + cid("big")[2:]
    assert chain.run(PAT, Write(HR, pb, 3_000_000, 0, T0 - 60_000, T0)) == OK
    assert chain.write(PAT2, HR, "big") == Code.CID_RECORDED  # raw(digest of that root)
    assert chain.write(PAT2, HR, "small") == OK
    assert chain.run(PAT, Write(BP, b"\x01\x70" + cid("small")[2:], 10, 0, T0 - 60_000, T0)) == Code.CID_RECORDED


def test_read_of_cid_not_on_chain(chain):
    assert chain.grant(PAT, DOC, [HR]) == OK
    assert chain.read(DOC, PAT, HR, "missing") == 4
    assert chain.read(PAT, PAT, HR, "missing") == 4


def test_read_of_cid_of_other_patient_or_type(chain):
    assert chain.write(PAT, HR, "p1-hr") == OK
    assert chain.write(PAT, BP, "p1-bp") == OK
    assert chain.write(PAT2, HR, "p2-hr") == OK
    assert chain.grant(PAT, DOC, [HR, BP]) == OK
    assert chain.read(DOC, PAT, HR, "p2-hr") == 8  # PAT's grant does not open PAT2's blob
    assert chain.read(DOC, PAT, HR, "p1-bp") == 8  # the HR grant does not cover a BP blob mislabeled as HR
    assert chain.read(PAT, PAT, HR, "p2-hr") == 8
    assert chain.read(DOC, PAT, BP, "p1-bp") == OK


def test_nonce_gap_and_replay():
    c = Chain()
    gap = c.tx(PAT, Write(HR, cid("gap"), 1, 0, T0, T0), nonce=2)
    assert c.apply([gap]) == [1]
    assert c.obj(keys.nonce(PAT.address)) is None  # a bad nonce is not consumed
    assert c.obj(keys.blob(cid("gap"))) is None
    assert c.obj(keys.receipt(gap.id)) == [c.height, 0, 1]
    first = c.tx(PAT, Write(HR, cid("one"), 1, 0, T0, T0), nonce=1)
    assert c.apply([first]) == [OK]
    other = c.tx(PAT, Write(HR, cid("replayed-nonce"), 1, 0, T0, T0), nonce=1)
    assert c.apply([other]) == [1]  # a used nonce, different content
    assert c.obj(keys.blob(cid("replayed-nonce"))) is None
    h = c.height
    assert c.apply([first]) == [9]  # the exact transaction again: its receipt stands
    assert c.obj(keys.receipt(first.id)) == [h - 1, 0, OK]
    assert c.obj(keys.nonce(PAT.address)) == 1


def test_same_tx_twice_in_one_block():
    c = Chain()
    tx = c.tx(PAT, Write(HR, cid("twice"), 1, 0, T0, T0))
    nxt = c.tx(PAT, Write(HR, cid("next"), 1, 0, T0, T0))
    assert c.apply([tx, tx, nxt]) == [OK, 9, OK]
    assert c.obj(keys.receipt(tx.id)) == [c.height, 0, OK]
    assert c.obj(keys.receipt(nxt.id)) == [c.height, 2, OK]
    assert c.obj(keys.nonce(PAT.address)) == 2


def test_every_read_leaves_an_audit_entry(chain):
    assert chain.write(PAT, HR, "a") == OK
    assert chain.grant(PAT, DOC, [HR]) == OK
    stranger = Identity.from_seed(b"stranger")
    expected = [(DOC, HR, "a", OK), (DOC, BP, None, 3), (stranger, HR, "a", 3), (DOC, HR, "nope", 4),
                (PAT, HR, "a", OK)]
    txs = [chain.tx(who, Read(PAT.address, dt, cid(n) if n else b"", 0, T0)) for who, dt, n, _ in expected]
    assert chain.apply(txs, T0 + 5) == [e[3] for e in expected]
    audits = chain.audits(PAT)
    assert len(audits) == len(expected)
    for (who, dt, n, code), a, tx in zip(expected, audits, txs, strict=True):
        assert a == [who.address, dt, cid(n) if n else b"", 0, T0, T0 + 5, tx.id, code]
    # an append-only list (count + entry per index): a later block adds, never overwrites
    assert chain.read(DOC, PAT, HR) == OK
    assert len(chain.audits(PAT)) == len(expected) + 1
    assert chain.audits(PAT2) == []
    assert chain.obj(keys.audit_count(PAT.address)) == len(expected) + 1
    assert keys.audit(PAT.address, len(expected)) in chain.state


def test_emergency_reads_are_indexed_apart_by_their_audit_index(chain):
    """Every break-glass read, allowed or not, is also listed in the patient's emergency index,
    which holds its index in the audit log (so a client finds each without reading the log)."""
    assert chain.clinician(NURSE) == OK and chain.clinician(DOC) == OK
    bg = [chain.tx(DOC, Read(PAT.address, HR, b"", 0, T0, "ETREAT")),  # audit index 0, allowed
          chain.tx(DOC, Read(PAT.address, BP, b"", 0, T0)),  # 1: an ordinary read, refused (no grant)
          chain.tx(NURSE, Read(PAT.address, BP, b"", 0, T0, "ETREAT"))]  # 2, allowed
    assert chain.apply(bg, T0 + 5) == [OK, 3, OK]
    assert chain.obj(keys.emergency_count(PAT.address)) == 2
    assert [chain.obj(keys.emergency_entry(PAT.address, i)) for i in range(2)] == [0, 2]
    assert chain.run(PAT, Policy(False)) == OK
    assert chain.run(NURSE, Read(PAT.address, HR, b"", 0, T0, "ETREAT"), T0 + 6) == 10  # refused: indexed too
    assert chain.obj(keys.emergency_entry(PAT.address, 2)) == 3
    assert chain.obj(keys.emergency_count(PAT2.address)) is None


def test_grant_and_policy_records_say_when_and_by_which_transaction(chain):
    g = chain.tx(PAT, Grant(DOC.address, tuple(sorted((BP, HR))), T0 + 10**6, ()))
    assert chain.apply([g]) == [OK]
    assert GrantRec.decode(chain.state[keys.grant(PAT.address, DOC.address)]) == \
        GrantRec(sorted([BP, HR]), T0 + 10**6, chain.height, g.id)
    assert chain.run(PAT, Policy(False)) == OK
    assert PolicyRec.decode(chain.state[keys.policy(PAT.address)]) == PolicyRec(False, chain.height)


def test_a_write_records_its_blob_with_the_transaction_that_wrote_it(chain):
    tx = chain.tx(PAT, Write(HR, cid("rec"), 1000, 0, T0 - 60_000, T0))
    assert chain.apply([tx]) == [OK]
    rec = BlobRec.decode(chain.state[keys.blob(cid("rec"))])
    assert rec == BlobRec(PAT.address, HR, 0, 1000, T0 - 60_000, T0, chain.height, tx.id)


def test_writes_grants_and_profiles_leave_no_audit():
    c = Chain()
    assert c.profile(DOC) == OK
    assert c.write(PAT, HR, "x") == OK
    assert c.grant(PAT, DOC, [HR]) == OK
    assert c.audits(PAT) == [] and c.audits(DOC) == []


def _scenario(c: Chain) -> list[Tx]:
    return [c.tx(DOC, Profile("D", "r", "o", DOC.box_public)),
            c.tx(PAT, Write(HR, cid("d1"), 10, 0, T0, T0 + 1)),
            c.tx(PAT, Grant(DOC.address, (HR,), 0, (SealedKey(HR, 0, b"s" * 80),))),
            c.tx(DOC, Read(PAT.address, HR, cid("d1"), 0, T0)),
            c.tx(PAT2, Write(BP, cid("d2"), 10, 0, T0, T0 + 1)),
            c.tx(DOC, Read(PAT2.address, BP, b"", 0, T0))]


def test_determinism_same_block_same_result():
    c = Chain()
    txs = _scenario(c)
    snapshot = dict(c.state)
    r1 = apply_block(c.state.get, txs, 1, T0, c.tree.get)
    r2 = apply_block(dict(snapshot).get, list(txs), 1, T0, {}.get)
    assert c.state == snapshot  # the base view is never written
    assert r1.codes == r2.codes == [OK, OK, OK, OK, OK, 3]
    assert r1.writes == r2.writes and r1.state_root == r2.state_root and r1.nodes == r2.nodes
    assert r1.state_root == smt.naive_root(r1.writes)  # the root commits to the whole state
    # height and time feed the root (receipts and audit entries carry them)
    assert apply_block(c.state.get, txs, 2, T0, c.tree.get).state_root != r1.state_root
    assert apply_block(c.state.get, txs, 1, T0 + 1, c.tree.get).state_root != r1.state_root


def test_determinism_tx_order_changes_root():
    c = Chain()
    txs = _scenario(c)
    base = apply_block(c.state.get, txs, 1, T0, c.tree.get)
    # two independent senders swapped: same outcome codes, but receipts carry indices
    swapped = [txs[4], *txs[:4], txs[5]]
    res = apply_block(c.state.get, swapped, 1, T0, c.tree.get)
    assert sorted(res.codes) == sorted(base.codes)
    assert res.state_root != base.state_root
    # order also changes outcomes: the read before the grant is denied
    reordered = [txs[0], txs[1], txs[3], txs[2]]
    assert apply_block(c.state.get, reordered, 1, T0, c.tree.get).codes == [OK, OK, 3, OK]


def test_sealed_keys_for_future_epoch_refused(chain):
    assert chain.grant(PAT, DOC, [HR], sealed=[SealedKey(HR, 1, b"k" * 80)]) == 7
    assert chain.obj(keys.grant(PAT.address, DOC.address)) is None
    assert chain.grant(PAT, DOC, [HR], sealed=[SealedKey(HR, 0, b"k" * 80)]) == OK
    assert chain.state[keys.sealed_key(PAT.address, DOC.address, HR, 0)] == b"k" * 80
    assert chain.grant(PAT, DOC, []) == OK  # HR -> epoch 1
    assert chain.grant(PAT, DOC, [HR], sealed=[SealedKey(HR, 2, b"n" * 80)]) == 7
    ok = [SealedKey(HR, 0, b"o" * 80), SealedKey(HR, 1, b"n" * 80)]
    assert chain.grant(PAT, DOC, [HR], sealed=ok) == OK
    assert chain.state[keys.sealed_key(PAT.address, DOC.address, HR, 1)] == b"n" * 80


def test_check_tx_is_pure_and_matches_apply(chain):
    assert chain.write(PAT, HR, "c") == OK
    view = Overlay(chain.state.get)
    read = chain.tx(DOC, Read(PAT.address, HR, cid("c"), 0, T0))
    assert check_tx(view, read, T0) == 3
    assert view.writes == {}
    assert chain.grant(PAT, DOC, [HR]) == OK
    assert check_tx(Overlay(chain.state.get), read, T0) == OK
    assert chain.apply([read]) == [OK]


def test_apply_tx_on_overlay_and_codes_table():
    view = Overlay({}.get)
    tx = Tx.build(PAT, CHAIN, 1, Write(HR, cid("o"), 1, 0, T0, T0))
    assert apply_tx(view, tx, 7, 3, T0) == OK
    assert decode(view.get(keys.receipt(tx.id))) == [7, 3, OK]
    assert apply_tx(view, tx, 7, 4, T0) == 9
    assert decode(view.get(keys.receipt(tx.id))) == [7, 3, OK]
    assert set(CODES) == set(range(16)) == set(Code)


def test_each_grantee_joins_the_committed_grantee_list_once(chain):
    """The list a client proves a patient's grants from: a change or revoke adds no second entry."""
    assert chain.profile(NURSE) == OK
    count = lambda: chain.obj(keys.grant_count(PAT.address))  # noqa: E731
    assert count() is None
    assert chain.grant(PAT, DOC, [HR]) == OK and count() == 1
    assert chain.state[keys.grant_entry(PAT.address, 0)] == DOC.address
    assert chain.grant(PAT, DOC, [HR, BP]) == OK and chain.grant(PAT, DOC, []) == OK and count() == 1
    assert chain.grant(PAT, NURSE, [BP]) == OK and count() == 2
    assert chain.state[keys.grant_entry(PAT.address, 1)] == NURSE.address


def test_genesis_state_root_is_the_documented_hash():
    """docs/PROTOCOL.md: H(msgpack ["medchain/genesis/v1", chain_id, [validator_public_key, ...]])."""
    vals = [PAT.public_key, DOC.public_key]
    want = hashlib.sha256(msgpack.packb(["medchain/genesis/v1", CHAIN, vals], use_bin_type=True)).digest()
    assert genesis_state_root(CHAIN, iter(vals)) == want != genesis_state_root(CHAIN, vals[:1])
