"""Break-glass for clinicians, scoped: only a profile carrying a credential of an issuer listed in
the genesis may break the glass; emergency reads are limited per staff member, per issuer and per
patient; keys go to an emergency reader only as a separate, time-limited release of the epochs
its read touched, which never merges into a lasting grant and ends like any expiry. The state
machine as pure logic (the devnet tests are in tests/test_consent.py)."""

from __future__ import annotations

import pytest

from node.crypto.keys import Identity
from node.state import Code, keys
from node.state.machine import BREAK_GLASS_ACCESS_MS, BREAK_GLASS_WINDOW_MS
from node.state.records import GrantRec, ProfileRec, Released
from node.state.rules import Rules
from node.tx import Policy, Profile, Read, Release, SealedKey, Write
from node.tx.credential import from_json, issue, signed_by_issuer, to_json
from node.tx.model import Credential
from tests.test_state import BP, CHAIN, DOC, GLU, HR, ISSUER, NURSE, PAT, PAT2, RULES, T0, Chain, cid

OTHER_ISSUER = Identity.from_seed(b"not in the genesis")
K = b"sealed"


def emergency(patient: Identity, dtype: int = HR) -> Read:
    return Read(patient.address, dtype, b"", 0, 2**62, "ETREAT")


def release(staff: Identity, dtype: int, expiry_ms: int, *epochs: int) -> Release:
    return Release(staff.address, dtype, expiry_ms, tuple(SealedKey(dtype, e, K) for e in epochs))


def end(staff: Identity, dtype: int) -> Release:
    return Release(staff.address, dtype, 0, ())


def grant_rec(ch: Chain, patient: Identity, staff: Identity) -> GrantRec:
    return GrantRec.decode(ch.state[keys.grant(patient.address, staff.address)])


# ---- credentials ---------------------------------------------------------------------------------

def test_a_credential_binds_issuer_chain_staff_and_end():
    c = issue(ISSUER, CHAIN, DOC.address, T0 + 5)
    assert signed_by_issuer(c, CHAIN, DOC.address)
    assert not signed_by_issuer(c, "another-chain", DOC.address)  # a credential of one network only
    assert not signed_by_issuer(c, CHAIN, NURSE.address)  # not transferable to another key
    assert not signed_by_issuer(Credential(c.issuer, c.not_after_ms + 1, c.sig), CHAIN, DOC.address)  # end forged
    assert not signed_by_issuer(Credential(OTHER_ISSUER.public_key, c.not_after_ms, c.sig), CHAIN, DOC.address)


def test_a_credential_file_round_trips_and_a_broken_one_is_refused():
    c = issue(ISSUER, CHAIN, DOC.address, T0 + 5)
    d = to_json(c)
    assert d == {"issuer": ISSUER.public_key.hex(), "not_after_ms": T0 + 5, "signature": c.sig.hex()}
    assert from_json(d) == c and from_json({**d, "staff": "extra keys are ignored"}) == c
    for broken in ({k: v for k, v in d.items() if k != "signature"}, {**d, "issuer": "zz"},
                   {**d, "not_after_ms": "soon"}, {**d, "signature": None}):
        with pytest.raises(ValueError, match="not a medchain credential"):
            from_json(broken)


@pytest.mark.parametrize("why, cred", [
    ("an issuer not in the genesis", lambda: issue(OTHER_ISSUER, CHAIN, DOC.address, T0 + 10**9)),
    ("issued for another chain", lambda: issue(ISSUER, "other-chain", DOC.address, T0 + 10**9)),
    ("issued to another staff member", lambda: issue(ISSUER, CHAIN, NURSE.address, T0 + 10**9)),
    ("expired", lambda: issue(ISSUER, CHAIN, DOC.address, T0)),
    ("its issuer named, another key signed", lambda: Credential(
        ISSUER.public_key, T0 + 10**9, OTHER_ISSUER.sign(b"\x00" * 32))),
])
def test_a_profile_with_a_bad_credential_is_refused(why, cred):
    ch = Chain()
    assert ch.run(DOC, Profile("D", "r", "o", DOC.box_public, cred())) == Code.INVALID_CREDENTIAL, why
    assert keys.profile(DOC.address) not in ch.state


def test_a_profile_records_its_credentials_issuer_and_end_and_a_plain_one_keeps_six_fields():
    ch = Chain()
    assert ch.profile(NURSE) == Code.OK
    assert len(ch.obj(keys.profile(NURSE.address))) == 6
    assert ch.clinician(DOC, until_ms=T0 + 99) == Code.OK
    p = ProfileRec.decode(ch.state[keys.profile(DOC.address)])
    assert (p.issuer, p.credential_until_ms) == (ISSUER.public_key, T0 + 99)


def test_only_a_clinician_breaks_the_glass_and_only_while_the_credential_lasts():
    ch = Chain()
    assert ch.profile(NURSE) == Code.OK  # self-registered: anyone can
    assert ch.run(NURSE, emergency(PAT)) == Code.NO_CREDENTIAL
    assert ch.clinician(DOC, until_ms=T0 + 100) == Code.OK
    assert ch.run(DOC, emergency(PAT), T0 + 99) == Code.OK
    assert ch.run(DOC, emergency(PAT), T0 + 100) == Code.NO_CREDENTIAL  # the credential ended
    assert ch.run(DOC, Profile("D", "r", "o", DOC.box_public), T0 + 101) == Code.OK  # a plain profile again
    assert ch.run(DOC, emergency(PAT), T0 + 101) == Code.NO_CREDENTIAL  # and the credential is gone with it


def test_a_genesis_without_issuers_lets_nobody_break_the_glass():
    ch = Chain()
    ch.rules = Rules()
    assert ch.clinician(DOC) == Code.INVALID_CREDENTIAL
    assert ch.profile(DOC) == Code.OK
    assert ch.run(DOC, emergency(PAT)) == Code.NO_CREDENTIAL


# ---- limits --------------------------------------------------------------------------------------

def test_fresh_keys_share_their_issuers_budget():
    """A Sybil: an issuer's staff (or one person with many credentialed keys) share one budget."""
    ch = Chain()
    ch.rules = Rules(RULES.issuers, per_staff=3, per_issuer=4, per_patient=100)
    staff = [Identity.from_seed(b"sybil %d" % i) for i in range(3)]
    for s in staff:
        assert ch.clinician(s) == Code.OK
    codes = [ch.run(s, emergency(PAT2 if i % 2 else PAT), T0 + i) for i, s in enumerate(staff * 2)]
    assert codes == [Code.OK] * 4 + [Code.BREAK_GLASS_LIMIT] * 2
    assert ch.obj(keys.break_glass_issuer(ISSUER.public_key)) == [T0, 4]
    assert ch.run(staff[2], emergency(PAT), T0 + BREAK_GLASS_WINDOW_MS) == Code.OK  # a new window


def test_one_patient_is_read_by_emergency_only_so_often():
    ch = Chain()
    ch.rules = Rules(RULES.issuers, per_staff=3, per_issuer=100, per_patient=2)
    assert ch.clinician(DOC) == Code.OK and ch.clinician(NURSE) == Code.OK
    assert ch.run(DOC, emergency(PAT)) == Code.OK and ch.run(NURSE, emergency(PAT, BP)) == Code.OK
    assert ch.run(NURSE, emergency(PAT)) == Code.BREAK_GLASS_LIMIT  # per patient, whoever reads
    assert ch.run(NURSE, emergency(PAT2)) == Code.OK  # another patient has their own budget
    assert ch.obj(keys.break_glass_patient(PAT.address)) == [T0, 2]


def test_a_refused_emergency_read_counts_in_no_budget():
    ch = Chain()
    assert ch.clinician(DOC) == Code.OK and ch.run(PAT, Read(PAT.address, HR, b"", 0, 1)) == Code.OK
    ch.run(PAT, Policy(False))
    assert ch.run(DOC, emergency(PAT)) == Code.BREAK_GLASS_OFF
    assert keys.break_glass_issuer(ISSUER.public_key) not in ch.state
    assert keys.break_glass_patient(PAT.address) not in ch.state


# ---- releases ------------------------------------------------------------------------------------

@pytest.fixture
def ch() -> Chain:
    """A patient with glucose data at epochs 0 and 1, a clinician (DOC) who broke the glass on it."""
    c = Chain()
    assert c.clinician(DOC) == Code.OK and c.profile(NURSE) == Code.OK
    assert c.run(PAT, Write(GLU, cid("g0"), 10, 0, 1, 2)) == Code.OK
    assert c.grant(PAT, NURSE, [GLU]) == Code.OK and c.grant(PAT, NURSE, []) == Code.OK  # rotates to epoch 1
    assert c.epoch(PAT, GLU) == 1 and c.run(PAT, Write(GLU, cid("g1"), 10, 1, 3, 4)) == Code.OK
    assert c.run(DOC, emergency(PAT, GLU), T0 + 10) == Code.OK
    return c


def test_keys_go_only_to_an_emergency_reader_of_that_type_within_its_window(ch):
    until = T0 + 10 + BREAK_GLASS_ACCESS_MS
    assert ch.run(PAT, release(NURSE, GLU, until, 0)) == Code.NO_EMERGENCY_READ  # no emergency read
    assert ch.run(PAT, release(DOC, HR, until, 0)) == Code.NO_EMERGENCY_READ  # read glucose, not heart rate
    assert ch.run(PAT, release(DOC, GLU, until + 1, 0)) == Code.NO_EMERGENCY_READ  # outlives the window
    assert ch.run(PAT, release(DOC, GLU, until, 2)) == Code.INVALID_GRANT  # an epoch not yet used
    assert ch.run(PAT, release(DOC, GLU, T0 + 20, 0), T0 + 20) == Code.INVALID_GRANT  # already expired
    tx = ch.tx(PAT, release(DOC, GLU, until, 0))
    assert ch.apply([tx]) == [Code.OK]
    assert grant_rec(ch, PAT, DOC) == GrantRec([], 0, ch.height, tx.id, (Released(GLU, until, [0], tx.id),))
    assert ch.state[keys.sealed_key(PAT.address, DOC.address, GLU, 0)] == K
    assert keys.sealed_key(PAT.address, DOC.address, GLU, 1) not in ch.state  # only what was released


def test_a_release_never_merges_into_a_lasting_grant(ch):
    assert ch.grant(PAT, DOC, [HR]) == Code.OK  # a lasting grant of heart rate
    assert ch.run(PAT, release(DOC, GLU, T0 + 1000, 0, 1)) == Code.OK
    g = grant_rec(ch, PAT, DOC)
    assert (g.types, g.expiry_ms) == ([HR], 0)  # the lasting grant is untouched
    assert g.released == (Released(GLU, T0 + 1000, [0, 1], g.released[0].tx),)
    assert ch.grant(PAT, DOC, [HR, BP]) == Code.OK  # a later grant keeps the release apart, unextended
    g = grant_rec(ch, PAT, DOC)
    assert g.types == [HR, BP] and g.released[0].expiry_ms == T0 + 1000
    assert ch.obj(keys.grant_count(PAT.address)) == 2  # NURSE, DOC: each listed once


def test_a_release_of_the_current_epoch_ends_like_an_expiry(ch):
    """Data written after the release ends is under a key the emergency reader never held."""
    assert ch.run(PAT, release(DOC, GLU, T0 + 1000, 0, 1)) == Code.OK
    assert ch.obj(keys.expiring(PAT.address, GLU)) == [[DOC.address, T0 + 1000]]
    assert ch.run(PAT, Write(GLU, cid("g2"), 10, 1, 5, 6), T0 + 999) == Code.OK
    assert ch.run(PAT, Write(GLU, cid("g3"), 10, 1, 7, 8), T0 + 1000) == Code.KEY_EXPIRED
    assert ch.run(PAT, end(DOC, GLU), T0 + 1000) == Code.OK
    assert ch.epoch(PAT, GLU) == 2 and grant_rec(ch, PAT, DOC).released == ()
    assert ch.run(PAT, Write(GLU, cid("g3"), 10, 2, 7, 8), T0 + 1001) == Code.OK
    assert ch.run(PAT, end(DOC, GLU)) == Code.INVALID_GRANT  # nothing left to end


def test_a_release_replacing_one_that_held_the_current_epoch_rotates_like_its_end(ch):
    """A release replaces the reader's last one of the type. When the last one held the current key
    epoch and the new one does not, the reader still holds that key: the chain rotates the type as
    the end of the old one would. Before, the hold was dropped with no rotation, and new data stayed
    under a key the emergency reader held (a second emergency read naming an old blob, after the first
    release expired, was enough)."""
    first = T0 + 10 + BREAK_GLASS_ACCESS_MS
    assert ch.run(PAT, release(DOC, GLU, first, 0, 1)) == Code.OK
    assert ch.run(PAT, Write(GLU, cid("g2"), 10, 1, 5, 6), first) == Code.KEY_EXPIRED  # it expired
    again = first + 1
    assert ch.run(DOC, Read(PAT.address, GLU, cid("g0"), 0, 2**62, "ETREAT"), again) == Code.OK
    assert ch.run(PAT, release(DOC, GLU, again + BREAK_GLASS_ACCESS_MS, 0), again) == Code.OK  # epoch 0 only
    assert ch.epoch(PAT, GLU) == 2 and ch.obj(keys.expiring(PAT.address, GLU)) == []
    assert ch.run(PAT, Write(GLU, cid("g2"), 10, 1, 5, 6), again) == Code.STALE_EPOCH  # not under DOC's key
    assert ch.run(PAT, Write(GLU, cid("g2"), 10, 2, 5, 6), again) == Code.OK
    # a replacement that still lists the current epoch keeps the hold, and one of past epochs only
    # after a release of past epochs only rotates nothing
    assert ch.run(PAT, release(DOC, GLU, again + 5, 0, 2), again) == Code.OK
    assert ch.epoch(PAT, GLU) == 2 and ch.obj(keys.expiring(PAT.address, GLU)) == [[DOC.address, again + 5]]
    assert ch.run(PAT, release(DOC, GLU, again + 6, 0, 2), again) == Code.OK and ch.epoch(PAT, GLU) == 2
    assert ch.run(PAT, release(DOC, GLU, again + 7, 0), again) == Code.OK and ch.epoch(PAT, GLU) == 3
    assert ch.run(PAT, release(DOC, GLU, again + 8, 0), again) == Code.OK and ch.epoch(PAT, GLU) == 3


def test_a_release_of_past_epochs_only_needs_no_rotation(ch):
    assert ch.run(PAT, release(DOC, GLU, T0 + 1000, 0)) == Code.OK
    assert ch.obj(keys.expiring(PAT.address, GLU)) in (None, [])
    assert ch.run(PAT, Write(GLU, cid("g2"), 10, 1, 5, 6), T0 + 2000) == Code.OK
    assert ch.run(PAT, end(DOC, GLU), T0 + 2000) == Code.OK and ch.epoch(PAT, GLU) == 1


def test_ending_a_release_keeps_a_grant_of_the_same_type(ch):
    """A grantee of the type keeps it: ending the release neither rotates nor drops its hold."""
    assert ch.run(PAT, release(DOC, GLU, T0 + 1000, 1)) == Code.OK
    assert ch.grant(PAT, DOC, [GLU], expiry_ms=T0 + 5000) == Code.OK
    assert ch.obj(keys.expiring(PAT.address, GLU)) == [[DOC.address, T0 + 5000]]  # the later of the two
    assert ch.run(PAT, end(DOC, GLU), T0 + 1500) == Code.OK
    assert ch.epoch(PAT, GLU) == 1
    assert ch.obj(keys.expiring(PAT.address, GLU)) == [[DOC.address, T0 + 5000]]


def test_a_release_to_a_staff_member_with_no_grant_lists_them_for_the_patient(ch):
    before = ch.obj(keys.grant_count(PAT.address))
    assert ch.run(PAT, release(DOC, GLU, T0 + 1000, 1)) == Code.OK
    assert ch.obj(keys.grant_count(PAT.address)) == before + 1
    assert ch.state[keys.grant_entry(PAT.address, before)] == DOC.address
    g = grant_rec(ch, PAT, DOC)
    assert g.types == [] and g.expiry_ms == 0  # no lasting access: an ordinary read is still refused
    assert ch.run(DOC, Read(PAT.address, GLU, b"", 0, 5), T0 + 11) == Code.DENIED


def test_only_the_patient_releases_their_keys(ch):
    """A release is signed by the patient whose data it opens: another 'patient' releasing to DOC
    names their own (empty) data, never PAT's."""
    assert ch.run(PAT2, release(DOC, GLU, T0 + 1000, 0)) == Code.NO_EMERGENCY_READ
    assert ch.run(DOC, release(DOC, GLU, T0 + 1000, 0)) == Code.NO_PROFILE  # to oneself: never
