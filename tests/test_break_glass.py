"""Break-glass: an emergency read without a grant (reason ETREAT), committed, flagged in the audit
log, rate-limited per staff member in block time, and impossible once the patient opts out. The
state machine as pure logic, then the whole path through real validator processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.net.localnet import dev_issuer
from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import AccessDenied, Staff
from devices.wearable.wearables import make_wearable
from node.crypto.keys import Identity
from node.ipfs.cid import Cid
from node.state import Code, keys
from node.state.machine import BREAK_GLASS_LIMIT, BREAK_GLASS_WINDOW_MS
from node.tx import Policy, Read, Tx, TxError, Write
from node.tx.credential import issue
from node.tx.model import KIND_POLICY, VERSION
from node.wire import encode
from tests.conftest import run
from tests.test_cli import medchain
from tests.test_state import BP, CHAIN, DOC, HR, NURSE, PAT, PAT2, T0, Chain, cid

ROOT = Path(__file__).resolve().parents[1]


def emergency(patient: Identity, dtype: int = HR, c: bytes = b"") -> Read:
    return Read(patient.address, dtype, c, 0, 2**62, "ETREAT")


# ---- the wire form --------------------------------------------------------------------------

def test_ordinary_read_keeps_its_five_fields_and_the_reason_is_a_sixth():
    plain, bg = Read(PAT.address, HR, b"", 0, 5), Read(PAT.address, HR, b"", 0, 5, "ETREAT")
    assert len(plain.fields()) == 5 and bg.fields()[5] == "ETREAT"
    for body in (plain, bg, Policy(True), Policy(False)):
        tx = Tx.build(DOC, CHAIN, 1, body)
        assert Tx.decode(tx.raw, CHAIN).body == body


@pytest.mark.parametrize("reason", ["", "BTG", "etreat", "ETREAT ", 1, None, b"ETREAT", True])
def test_bad_reason_refused(reason):
    payload = encode([VERSION, 0x21, CHAIN, DOC.public_key, 1, PAT.address, HR, b"", 0, 5, reason])
    raw = encode([payload, DOC.sign(hashlib.sha256(payload).digest())])
    with pytest.raises(TxError, match="break-glass reason"):
        Tx.decode(raw, CHAIN)


@pytest.mark.parametrize("fields", [[], [1], [0], [True, True], [None], ["yes"]])
def test_bad_policy_refused(fields):
    payload = encode([VERSION, KIND_POLICY, CHAIN, PAT.public_key, 1, *fields])
    raw = encode([payload, PAT.sign(hashlib.sha256(payload).digest())])
    with pytest.raises(TxError, match="policy"):
        Tx.decode(raw, CHAIN)


# ---- the state machine --------------------------------------------------------------------------

def test_emergency_read_without_grant_is_allowed_and_audited():
    ch = Chain()
    assert ch.run(DOC, emergency(PAT)) == 2  # no profile: an emergency reader must be identifiable
    assert ch.profile(DOC) == 0
    assert ch.run(DOC, emergency(PAT)) == Code.NO_CREDENTIAL  # a self-registered profile is no clinician
    assert ch.clinician(DOC) == 0
    assert ch.run(DOC, Read(PAT.address, HR, b"", 0, 5)) == 3  # an ordinary read is still refused
    assert ch.run(DOC, emergency(PAT)) == 0
    audits = ch.audits(PAT)
    assert [a[7] for a in audits] == [2, 13, 3, 0]
    assert [len(a) for a in audits] == [9, 9, 8, 9] and audits[3][8] == "ETREAT"


def test_emergency_read_checks_the_cid():
    ch = Chain()
    ch.clinician(DOC)
    assert ch.run(DOC, emergency(PAT, HR, cid("nothing"))) == 4
    assert ch.run(PAT2, Write(HR, cid("x"), 10, 0, 1, 2)) == 0
    assert ch.run(DOC, emergency(PAT, HR, cid("x"))) == 8  # the cid is another patient's


def test_rate_limit_per_staff_member_in_block_time():
    ch = Chain()
    ch.clinician(DOC)
    ch.clinician(NURSE)
    codes = [ch.run(DOC, emergency(PAT), T0 + i) for i in range(BREAK_GLASS_LIMIT + 2)]
    assert codes == [0] * BREAK_GLASS_LIMIT + [11, 11]
    assert ch.run(DOC, emergency(PAT2), T0 + 10) == 11  # per staff member, whatever the patient
    assert ch.run(NURSE, emergency(PAT), T0 + 10) == 0  # another staff member has their own budget
    assert ch.run(DOC, emergency(PAT), T0 + BREAK_GLASS_WINDOW_MS - 1) == 11
    assert ch.run(DOC, emergency(PAT), T0 + BREAK_GLASS_WINDOW_MS) == 0  # a new window
    assert ch.obj(keys.break_glass(DOC.address)) == [T0 + BREAK_GLASS_WINDOW_MS, 1]


def test_when_an_emergency_read_is_allowed_again_is_the_last_full_window_s_end():
    """What admission tells a refused reader (Retry-After): the time until every window holding the
    read at its limit has ended; the staff member's and the patient's windows start apart."""
    from node.state import Overlay
    from node.state.machine import break_glass_reopens_ms
    from node.state.rules import Rules

    ch = Chain()
    ch.rules = Rules(ch.rules.issuers, per_staff=2, per_issuer=100, per_patient=2)
    ch.clinician(DOC)
    ch.clinician(NURSE)

    def reopens(reader: Identity, at: int) -> int | None:
        return break_glass_reopens_ms(Overlay(ch.state.get), reader.address, PAT.address, at, ch.rules)

    assert reopens(DOC, T0) == 0  # nothing read yet: nothing to wait for
    assert ch.run(NURSE, emergency(PAT2), T0) == 0  # the nurse's own window starts at T0
    assert ch.run(DOC, emergency(PAT), T0 + 1000) == 0  # the patient's window starts at T0 + 1 s
    assert reopens(DOC, T0 + 2000) == 0  # one read each: no window is full
    assert ch.run(NURSE, emergency(PAT), T0 + 5000) == 0  # the nurse's window and the patient's are full
    assert ch.run(DOC, emergency(PAT), T0 + 6000) == Code.BREAK_GLASS_LIMIT
    assert reopens(DOC, T0 + 6000) == BREAK_GLASS_WINDOW_MS + 1000 - 6000  # the patient's, for the doctor
    assert reopens(NURSE, T0 + 6000) == BREAK_GLASS_WINDOW_MS + 1000 - 6000  # both full: the later end
    assert reopens(DOC, T0 + 1000 + BREAK_GLASS_WINDOW_MS) == 0
    ch.rules = Rules(ch.rules.issuers, per_staff=2, per_issuer=100, per_patient=0)
    assert reopens(DOC, T0 + 6000) is None  # a limit of 0 never reopens
    assert reopens(PAT2, T0 + 6000) is None  # not a clinician: no window applies to it at all


def test_patient_opt_out_and_back():
    ch = Chain()
    ch.clinician(DOC)
    assert ch.run(PAT, Policy(False)) == 0
    assert ch.run(DOC, emergency(PAT)) == 10
    assert ch.run(DOC, emergency(PAT2)) == 0  # another patient did not opt out
    assert ch.run(PAT, Policy(True)) == 0
    assert ch.run(DOC, emergency(PAT)) == 0
    assert ch.obj(keys.policy(PAT.address))[0] is True


def replay_root() -> bytes:
    """The state root after a fixed history of policy changes and emergency reads (some refused)."""
    ch = Chain()
    ch.clinician(DOC)
    ch.apply([ch.tx(PAT, Policy(False)), ch.tx(DOC, emergency(PAT)), ch.tx(DOC, emergency(PAT2))])
    ch.apply([ch.tx(PAT, Policy(True))] + [ch.tx(DOC, emergency(PAT, BP)) for _ in range(4)], T0 + 5)
    return ch.root


def test_deterministic_replay():
    """Every validator replays the same root: checked across processes with different hash seeds
    (set and dict orders of str and bytes differ between them), not only twice in one process."""
    code = "from tests.test_break_glass import replay_root; print(replay_root().hex())"
    roots = {replay_root().hex()}
    for seed in ("1", "2", "random"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, timeout=120, check=True)
        roots.add(out.stdout.strip())
    assert len(roots) == 1, roots


# ---- real validator processes -----------------------------------------------------------------------

def test_break_glass_end_to_end(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"bg-patient"), Identity.from_seed(b"bg-doctor")
            other = Identity.from_seed(b"bg-patient-2")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            phone2 = Phone(other, c, genesis.chain_id, genesis.validator_keys)
            staff = Staff(doc, c, genesis.chain_id)
            await staff.register("Dr. ER", "emergency physician", "General Hospital")
            now = int(time.time() * 1000)
            with pytest.raises(AccessDenied, match="no valid clinician credential"):  # self-registered
                await staff.read(pat.address, "heart_rate", break_glass="ETREAT")
            await staff.register("Dr. ER", "emergency physician", "General Hospital",
                                 issue(dev_issuer(node.home), genesis.chain_id, doc.address, now + 10**8))
            frames = list(make_wearable("heart_rate", "hr", 1).frames_between(now - 120_000, now))
            res = await phone.write_window("heart_rate", frames)
            await phone2.write_window("heart_rate", frames)

            with pytest.raises(AccessDenied):  # no grant: an ordinary read is refused
                await staff.read(pat.address, "heart_rate")
            wins = await staff.read(pat.address, "heart_rate", break_glass="ETREAT")
            # the blob GET honoured the emergency read: fetched, but no data key was sealed to us yet
            assert [(w.cid, w.sealed, w.readings) for w in wins] == [(res.cid, True, [])]

            log = await c.audit(pat.address)
            assert len(log["break_glass"]) == 1 and log["break_glass"][0]["reader"] == doc.address.hex()
            assert log["break_glass"][0]["break_glass"] == "ETREAT" and log["break_glass"][0]["allowed"]

            # the phone, the patient's key agent, releases the keys for the emergency read
            assert len(await phone.answer_break_glass()) == 1
            assert await phone.answer_break_glass() == []  # once
            grant = (await c.grants(pat.address))["grants"][0]  # a release, apart from any lasting grant
            assert grant["types"] == [] and grant["expiry_ms"] == 0
            (rel,) = grant["released"]
            assert rel["type"] == "heart_rate" and rel["epochs"] == [res.epoch] and rel["expiry_ms"] > now
            wins = await staff.read(pat.address, "heart_rate", break_glass="ETREAT")
            assert wins[0].readings == frames and not wins[0].sealed

            # the patient opts out: refused at admission (403) and never committed
            await phone2.set_break_glass(False)
            assert (await c.account(other.address))["break_glass"] is False
            with pytest.raises(AccessDenied, match="disabled emergency access"):
                await staff.read(other.address, "heart_rate", break_glass="ETREAT")
            assert (await c.audit(other.address))["reads"] == []

            # rate limit: the third emergency read of the day was the last one
            await phone2.set_break_glass(True)
            await staff.read(other.address, "heart_rate", break_glass="ETREAT")
            assert BREAK_GLASS_LIMIT == 3
            with pytest.raises(AccessDenied, match="limit"):
                await staff.read(other.address, "heart_rate", break_glass="ETREAT")

            # an emergency read that was never committed opens nothing
            cid_b = Cid.parse(res.cid).to_bytes()
            rd = Tx.build(doc, genesis.chain_id, 99, Read(pat.address, 1, b"", 0, 5, "ETREAT"))
            with pytest.raises(ApiError) as e:
                await c.download(doc, genesis.chain_id, res.cid, cid_b, rd.id)
            assert e.value.status == 403

            # a revoke ends the emergency release too (it held the current epoch: heart rate rotates)
            await phone.revoke(doc.address)
            (after,) = (await c.grants(pat.address))["grants"]
            assert after["types"] == [] and after.get("released", []) == [], after
            assert (await c.account(pat.address))["epochs"]["heart_rate"] == res.epoch + 1
            # opting out also closes blobs an earlier emergency read opened
            await phone.set_break_glass(False)
            with pytest.raises(ApiError) as e:
                await c.download(doc, genesis.chain_id, res.cid, cid_b, bytes.fromhex(log["break_glass"][0]["tx"]))
            assert e.value.status == 403 and "disabled emergency access" in e.value.reason

    run(go())


def test_a_proven_audit_log_holds_when_a_break_glass_read_commits_while_it_is_read(node, genesis):
    """The patient's audit log and its emergency index are read with proofs. Their counts were
    proven at two states: a break-glass read committing in between made the index name an entry
    the log did not hold yet, and the honest validator's answers were refused as forged
    (NoHonestAnswer, from a review). Both counts come from one state now."""
    from devices.patient.verified_reads import VerifiedReader

    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"bg audit patient"), Identity.from_seed(b"bg audit doctor")
            now = int(time.time() * 1000)
            staff = Staff(doc, c, genesis.chain_id)
            await staff.register("Dr. ER", "emergency physician", "General Hospital",
                                 issue(dev_issuer(node.home), genesis.chain_id, doc.address, now + 10**8))
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys)
            await phone.write_window("heart_rate", list(make_wearable("heart_rate", "hr", 7).frames_between(
                now - 60_000, now)))
            raced: list[bool] = []

            class Racing(VerifiedReader):
                """A break-glass read commits right after the first proven answer."""

                async def fetch(self, state_keys, check=None):
                    out = await super().fetch(state_keys, check)
                    if not raced:
                        raced.append(True)
                        await staff.read(pat.address, "heart_rate", break_glass="ETREAT")
                    return out

            log = await Racing([node.url], genesis.chain_id, genesis.validator_keys, session=c.session).audit(pat.address)
            assert raced and log["count"] == 0 and log["break_glass"] == []  # as of the state it began from
            log = await VerifiedReader([node.url], genesis.chain_id, genesis.validator_keys,
                                       session=c.session).audit(pat.address)
            assert [e["break_glass"] for e in log["break_glass"]] == ["ETREAT"]
    run(go())


def at_a_terminal(answer: str, *args: str) -> str:
    """Run `medchain ARGS` with a terminal (a pty) as its stdin, typing `answer`; its stdout."""
    import pty
    master, slave = pty.openpty()
    try:
        os.write(master, answer.encode())
        p = subprocess.run([sys.executable, "-m", "node.cli", *args], stdin=slave, capture_output=True, text=True,
                           timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 0, p.stderr
    assert "Release these keys? [y/N]" in p.stdout and "key epochs [0]" in p.stderr
    return p.stdout


def test_break_glass_cli(node, tmp_path):
    pk, sk = tmp_path / "patient.json", tmp_path / "staff.json"
    pat = json.loads(medchain("keygen", "--out", str(pk), "--json").stdout)
    medchain("keygen", "--out", str(sk), "--json")
    url = ["--node", node.url]
    (tmp_path / "genesis.json").write_text((node.home / "genesis.json").read_text())  # beside the keys: the trust anchor
    bad = medchain("issuer", "credential", "--key", str(sk), "--staff", "00" * 32, "--genesis",
                   str(node.home / "genesis.json"), ok=False)  # not an issuer of this network
    assert bad.returncode == 1 and "is not an issuer" in bad.stderr
    cred = tmp_path / "cred.json"
    addr = Identity.load(sk).address.hex()
    medchain("issuer", "credential", "--key", str(node.home.parent / "issuer_key.json"), "--staff", addr,
             "--genesis", str(node.home / "genesis.json"), "--days", "1", "--out", str(cred))
    medchain("staff", "register", "--key", str(sk), "--name", "Dr. ER", "--credential", str(cred), *url)
    medchain("patient", "upload", "--type", "heart_rate", "--seconds", "20", "--key", str(pk), *url)
    genesis = ["--genesis", str(node.home / "genesis.json")]
    rd = json.loads(medchain("staff", "read", pat["address"], "--type", "heart_rate", "--break-glass", "ETREAT",
                             "--key", str(sk), *url, "--json").stdout)
    assert rd["windows"] == 1 and len(rd["sealed"]) == 1 and rd["readings"] == []
    text = medchain("patient", "audit", "--key", str(pk), *url).stdout
    assert text.startswith("!! 1 EMERGENCY (BREAK-GLASS) READ(S) OF YOUR DATA !!") and "BREAK-GLASS (ETREAT)" in text
    bad = medchain("patient", "break-glass", "release", "--key", str(pk), *url, *genesis, ok=False)
    assert bad.returncode == 1 and "needs your confirmation" in bad.stderr and "heart_rate" in bad.stderr
    assert at_a_terminal("n\n", "patient", "break-glass", "release", "--key", str(pk), *url, *genesis).endswith("nothing released\n")
    out = json.loads(medchain("patient", "break-glass", "release", "--yes", "--key", str(pk), *url, *genesis, "--json").stdout)
    assert [r["type"] for r in out["released"]] == ["heart_rate"] and len(out["tx"]) == 1
    rd = json.loads(medchain("staff", "read", pat["address"], "--type", "heart_rate", "--break-glass", "ETREAT",
                             "--key", str(sk), *url, "--json").stdout)
    assert len(rd["readings"]) == 20 and rd["sealed"] == []
    medchain("patient", "break-glass", "off", "--key", str(pk), *url)
    bad = medchain("staff", "read", pat["address"], "--type", "heart_rate", "--break-glass", "ETREAT",
                   "--key", str(sk), *url, ok=False)
    assert bad.returncode != 0 and "disabled emergency access" in bad.stderr
    bad = medchain("staff", "read", pat["address"], "--type", "heart_rate", "--break-glass", "BTG",
                   "--key", str(sk), *url, ok=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
