"""The wearable fleet against real validator processes: no reading lost, mixes, open and closed loop."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devices.load.fleet import FleetConfig
from devices.load.fleet_check import run_fleet
from devices.load.fleet_model import FleetPhone
from devices.wearable.ble import LinkParams
from node.crypto.keys import Identity
from node.tx import DATA_TYPES
from tests.conftest import run, running_network


def test_fleet_loses_no_reading(node, genesis):
    cfg = FleetConfig(wearables=50, phones=10, seconds=4, window_s=1.5, staff=2, reads=5, grants=2,
                      link=LinkParams(loss=0.1), drain_timeout=60)
    res = run(run_fleet([node.url], cfg, check_sample=3, genesis=genesis))
    chk = res["check"]
    assert res["failed"] == 0 and res["unfinished"] == 0, res["failed_by_kind"]
    # with the genesis, every commit counted was in a block whose certificate and ids checked
    assert res["blocks_proven"] > 0 and res["blocks_refused"] == 0
    assert res["committed_by_kind"]["write"] + res["drain"]["writes_committed"] > 20 and res["committed_by_kind"].get("read", 0) > 0
    assert res["readings_emitted"] >= 60 and res["ble"]["dropped"] == 0
    assert res["ble"]["attempts"] > res["ble"]["notifications"]  # 10% loss: retransmissions happened
    # every reading emitted is in a committed blob recorded on chain...
    assert chk["writes_missing_on_chain"] == 0
    assert chk["readings_in_committed_blobs"] == chk["readings_emitted"] == res["readings_emitted"]
    assert chk["readings_lost"] == 0
    # ...and a permitted staff member decrypts the sampled patients' windows to exactly what was sent
    assert chk["sampled_windows_decrypted"] > 0 and chk["sampled_windows_mismatched"] == 0
    assert chk["sampled_readings_decrypted"] == chk["sampled_readings_expected"] > 0
    assert res["generator_cpu_ms_per_tx"] > 0 and res["latency_ms"]["p50"] > 0
    # staff fetched and decrypted what they read; only reads that committed after a revoke are denied
    assert res["reads_decrypted"] > 0 and res["reads_failed"] == 0


def test_fleet_open_and_closed_loop(node):
    res = run(run_fleet([node.url], FleetConfig(wearables=20, phones=10, seconds=3, rate=20, drain_timeout=60)))
    assert res["failed"] == 0 and res["unfinished"] == 0
    assert res["blocks_proven"] is None  # no genesis given: the followed validator's word, and said so
    # open loop sends only at the offered rate; what is left stays buffered on the phones, counted
    assert res["readings_committed"] + res["readings_unsent"] == res["readings_emitted"]
    assert 50 <= res["committed_by_kind"]["write"] <= 61  # 20/s for 3 s (no end-of-run flush)
    res = run(run_fleet([node.url], FleetConfig(wearables=20, phones=10, seconds=3, closed=True, drain_timeout=60)))
    assert res["failed"] == 0 and res["readings_committed"] == res["readings_emitted"]


def test_medchain_bench_writes_report_and_plot(tmp_path):
    """`medchain bench` end to end: its own 1-validator devnet, a two-step sweep, JSON and PNG."""
    p = subprocess.run([sys.executable, "-m", "node.cli", "bench", "sweep", "--validators", "1", "--wearables", "40",
                        "--phones", "10", "--seconds", "2", "--rates", "10,20", "--idle-seconds", "0.5",
                        "--pause", "0", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert [s["offered_rate"] for s in rep["steps"]] == [10, 20]
    for s in rep["steps"]:
        assert s["committed"] > 0 and s["failed"] == 0 and s["unfinished"] == 0
        assert s["blocks_proven"] > 0 and s["blocks_refused"] == 0  # the devnet's own genesis checks them
        assert s["readings_committed"] + s["readings_unsent"] == s["readings_emitted"]
        assert set(s["latency_ms"]) == {"min", "avg", "p50", "p95", "p99", "max"}
        assert len(s["validator_cpu_s"]) == 1 and s["validator_rss_peak_mb"][0] > 10
        assert "RAPL" in s["energy"]["method"] or set(s["energy"]["models"]) == {"x86-server-core", "raspberry-pi-4"}
    assert rep["wearable_energy"]["heart_rate"]["uj_per_reading"] > 0
    assert rep["machine"]["command"].startswith("medchain bench sweep") and rep["validators_agree"]
    assert sorted(f.rsplit(".", 1)[1] for f in rep["files"]) == ["json", "png"]
    assert all((tmp_path / f.rsplit("/", 1)[1]).stat().st_size > 0 for f in rep["files"])


def test_the_edge_workload_confines_every_validator_to_one_core_in_every_step():
    """`medchain bench edge`: each offered rate is a step with the validators pinned to CPU 0."""
    import argparse

    from devices.load.benchmark import _steps, add_arguments
    sp = argparse.ArgumentParser()
    add_arguments(sp)
    steps = _steps(sp.parse_args(["edge", "--rates", "300,600"]))
    assert [(label, cfg.rate, pin) for label, cfg, pin in steps] == [
        ("300 tx/s, 1 core", 300.0, "validators"), ("600 tx/s, 1 core", 600.0, "validators")]


@pytest.mark.parametrize("validators", [1, 4])
def test_fleet_under_overload_resends_in_order_and_loses_nothing(tmp_path, validators):
    """Each phone may send 3 writes a second and is offered about 6, each staff member 3 reads a
    second and is offered 4: the validator refuses the rest with 429s, inside batches whose other
    transactions it admits. The fleet, a good client, sends each refused transaction again after the
    Retry-After, in nonce order with the ones behind it: no write is ever refused for a nonce it
    skipped or reused, no read fails, and every reading commits."""
    from node.genesis import Genesis

    with running_network(tmp_path, validators, sender_rate=3, sender_burst=3) as nodes:
        cfg = FleetConfig(wearables=300, phones=20, seconds=5, rate=200, staff=2, grants=4, reads=8, linger_ms=20,
                          drain_timeout=120)
        res = run(run_fleet([n.url for n in nodes], cfg, check_sample=2,
                            genesis=Genesis.load(nodes[0].home / "genesis.json")))
    assert res["overloaded_retried"] > 100  # the limit was real
    assert res["failed"] == 0 and res["unfinished"] == 0, res["failed_by_kind"]
    assert res["committed_by_kind"].get("read", 0) > 20 and res["reads_failed"] == 0
    # a write sealed before a revoke committed is sealed again under the new key epoch; nothing else
    # conflicts: reads behind a staff member's read denied (in the POST, queued, or held back 429) are
    # signed again, as no conflict of theirs (the held-back ones gave 1 run in about 8 a few "nonce out
    # of order"; none in 30 runs since 43d1e40)
    assert all("stale key epoch" in r for r in res["conflicts"]), res["conflicts"]
    # every reading is in a write committed in a block whose certificate checked, or still on its phone;
    # a staff member decrypts the sampled patients' windows (its reads, too, wait out their 429s)
    assert res["blocks_proven"] > 0 and res["blocks_refused"] == 0
    assert res["readings_committed"] + res["readings_unsent"] == res["readings_emitted"]
    chk = res["check"]
    assert chk["writes_missing_on_chain"] == 0 and chk["readings_lost"] == 0 and chk["sampled_windows_mismatched"] == 0


def test_a_phone_never_takes_key_epochs_below_those_its_proven_blocks_set():
    """The fleet re-reads a phone's key epochs from its validator after a grant change; a validator
    answering an older epoch would have the next windows sealed under a key the revoked clinician
    still holds, so the epochs the followed (proven) blocks set are a floor."""
    ph = FleetPhone(Identity.from_seed(b"fleet epochs"), 0, 0, "c")
    hr, bp = DATA_TYPES["heart_rate"], DATA_TYPES["blood_pressure"]
    ph.chain_epochs = {hr: 3, bp: 1}
    ph.take_epochs({"epochs": {"heart_rate": 1, "glucose": 2}})  # a stale (or lying) answer
    assert ph.epochs == {hr: 3, bp: 1, DATA_TYPES["glucose"]: 2}
    ph.take_epochs({"epochs": {"heart_rate": 4, "blood_pressure": 1}})  # newer than the followed blocks: taken
    assert ph.epochs == {hr: 4, bp: 1}


def test_a_read_refused_by_the_policy_counts_as_denied_only_after_a_grant_change():
    """A staff read refused 429 and sent again after its Retry-After can come after a revoke staged
    later, and is then refused 403 at admission, as the policy says: counted with the reads denied
    (the fresh-clone run failed on one). With no grant change since it was staged, a 403 is the
    fleet's own fault and stays a failure."""
    from types import SimpleNamespace

    from devices.load.fleet_model import Meta
    from devices.load.fleet_proxy import ProxyLanes

    hr = DATA_TYPES["heart_rate"]
    ph = FleetPhone(Identity.from_seed(b"fleet denied"), 0, 0, "c")
    ph.granted = (hr,)
    host = SimpleNamespace(phones=[ph])
    read = Meta("read", 0, 100.0, dtype=hr, patient=0)
    assert not ProxyLanes._grant_moved(host, read)  # type: ignore[arg-type]
    ph.blocked = True  # a grant change in flight
    assert ProxyLanes._grant_moved(host, read)  # type: ignore[arg-type]
    ph.blocked, ph.granted, ph.grants_changed = False, (hr,), 101.0  # changed (away and back) since staged
    assert ProxyLanes._grant_moved(host, read)  # type: ignore[arg-type]
    ph.grants_changed, ph.granted = 99.0, ()
    assert ProxyLanes._grant_moved(host, read)  # type: ignore[arg-type]


def test_reads_behind_a_read_refused_for_good_are_signed_again_and_are_no_conflict():
    """A staff read denied 403 at admission (its patient revoked since it was staged) leaves a gap in
    its staff member's nonces: the reads behind it in the same POST are answered "nonce out of order",
    and those still queued in the lane were signed from nonces now out of order too. All of them are
    signed again from the nonce expected next, and none is counted a conflict (the overload test saw
    one, and took it for a regression)."""
    import asyncio
    from types import SimpleNamespace

    from devices.load.fleet import Fleet
    from devices.load.fleet_model import Meta

    async def go() -> tuple:
        fl = Fleet(["http://127.0.0.1:1"], FleetConfig())
        hr = DATA_TYPES["heart_rate"]
        ph = FleetPhone(Identity.from_seed(b"fleet gap"), 0, 0, "c")
        ph.granted, ph.grants_changed = (), 200.0  # revoked after the reads were staged
        fl.phones = [ph]

        def read(s: int, i: int) -> Meta:
            m = Meta("read", s, 100.0, dtype=hr, patient=0)
            m.tx = SimpleNamespace(id=bytes([s, i]) * 16)
            return m

        denied, behind, other, queued, queued_other = read(0, 1), read(0, 2), read(1, 1), read(0, 3), read(1, 2)
        fl.lanes[0] = [queued, queued_other]
        fl.open_ops = 5
        res = [{"status": 403, "error": "not granted"},
               {"status": 409, "error": "nonce out of order: got 6, expected 5"},
               {"status": 202}]
        back, wait, pause = fl._answers(0, [denied, behind, other], res, False)
        await asyncio.sleep(0)  # the re-sign is queued by a task
        return fl, back, (denied, behind, queued, queued_other), fl.work.get_nowait()

    fl, back, (denied, behind, queued, queued_other), again = asyncio.run(go())
    assert back == [] and fl.reads_refused == 1 and denied.done
    assert again == [behind, queued] and fl.lanes[0] == [queued_other] and fl.staff_resync == {0}
    assert fl.conflicts == {} and fl.conflicts_resent == 0 and behind.tries == 0


def test_a_phones_queued_writes_behind_one_refused_for_good_are_signed_again_and_are_no_conflict():
    """A phone's write refused for good (400) with nothing of its phone going back in that POST leaves
    a gap: its writes still queued in the lane were signed past it. They are taken out of the lane and
    signed again from the validator's next nonce (the phone re-reads it), as no try and no conflict;
    before, they went out as signed and came back "nonce out of order", each counted a conflict."""
    import asyncio
    from types import SimpleNamespace

    from devices.load.fleet import Fleet
    from devices.load.fleet_model import Meta

    async def go() -> tuple:
        fl = Fleet(["http://127.0.0.1:1"], FleetConfig())
        ph, other = (FleetPhone(Identity.from_seed(s), 0, 0, "c") for s in (b"fleet lost", b"fleet other"))
        fl.phones = [ph, other]

        def write(k: int, i: int) -> Meta:
            m = Meta("write", k, 100.0, dtype=DATA_TYPES["heart_rate"])
            m.tx = SimpleNamespace(id=bytes([k, i]) * 16)
            return m

        bad, ok, queued, queued_other = write(0, 1), write(1, 1), write(0, 2), write(1, 2)
        fl.lanes[0] = [queued, queued_other]
        fl.open_ops = ph.outstanding = 2
        back, wait, pause = fl._answers(0, [bad, ok], [{"status": 400, "error": "bad body"}, {"status": 202}], False)
        await asyncio.sleep(0)  # the re-sign is queued by a task
        return fl, ph, back, (bad, queued, queued_other), fl.work.get_nowait()

    fl, ph, back, (bad, queued, queued_other), again = asyncio.run(go())
    assert back == [] and bad.done and fl.failed["write"] == 1
    assert again == [queued] and fl.lanes[0] == [queued_other] and ph.resync and not fl.staff_resync
    assert fl.conflicts == {} and fl.conflicts_resent == 0 and queued.tries == 0


def test_reads_held_back_behind_a_read_refused_for_good_are_signed_again_after_the_retry_after():
    """A read sent again after its Retry-After can be denied 403 (a revoke committed meanwhile); the
    validator answers the same member's later reads of that POST 429 "held back". Those held the
    nonces after the gap: kept at the lane's head as signed, they came back "nonce out of order" once
    the validator forgot the refusal (the rare 409s of the fleet under overload). They are signed
    again after the Retry-After, and only that member's nonce is read again: another member's reads
    signed and queued in a lane are not yet in the validator's pool, and a fresh count of theirs
    would reuse those nonces ("nonce conflict")."""
    import asyncio
    from types import SimpleNamespace

    from devices.load.fleet import Fleet
    from devices.load.fleet_model import Meta

    async def go() -> tuple:
        fl = Fleet(["http://127.0.0.1:1"], FleetConfig())
        hr = DATA_TYPES["heart_rate"]
        ph = FleetPhone(Identity.from_seed(b"fleet held"), 0, 0, "c")
        ph.granted, ph.grants_changed = (), 200.0
        fl.phones = [ph]

        def read(s: int, i: int) -> Meta:
            m = Meta("read", s, 100.0, dtype=hr, patient=0)
            m.tx = SimpleNamespace(id=bytes([s, i]) * 16)
            return m

        denied, held, slow, queued_other = read(0, 1), read(0, 2), read(1, 1), read(1, 2)
        fl.lanes[0] = [queued_other]
        fl.open_ops = 4
        res = [{"status": 403, "error": "not granted"},
               {"status": 429, "error": "held back: sender exceeds its rate", "retry_after": 0.05},
               {"status": 429, "error": "sender exceeds its rate", "retry_after": 0.05}]
        back, wait, pause = fl._answers(0, [denied, held, slow], res, False)
        assert fl.work.empty()  # not before the Retry-After
        return fl, back, wait, (held, slow, queued_other), await asyncio.wait_for(fl.work.get(), 5)

    fl, back, wait, (held, slow, queued_other), again = asyncio.run(go())
    assert again == [held] and back == [slow] and wait == 0.05
    assert fl.staff_resync == {0}  # staff member 1's queued read keeps its nonce, and its count stays
    assert fl.conflicts == {} and held.tries == 0 and not held.done


def test_a_staff_read_going_back_does_not_hide_a_phone_of_the_same_index_that_lost_a_write():
    """`lost` (phones with a write refused for good and nothing of theirs going back) compared phone
    indices with the owners of everything going back, staff reads included: phone 1's queued writes,
    signed past its gap, stayed in the lane whenever staff member 1 had a read going back."""
    import asyncio
    from types import SimpleNamespace

    from devices.load.fleet import Fleet
    from devices.load.fleet_model import Meta

    async def go() -> tuple:
        fl = Fleet(["http://127.0.0.1:1"], FleetConfig())
        fl.phones = [FleetPhone(Identity.from_seed(bytes([k])), 0, 0, "c") for k in range(2)]
        bad = Meta("write", 1, 100.0, dtype=DATA_TYPES["heart_rate"])
        queued = Meta("write", 1, 100.0, dtype=DATA_TYPES["heart_rate"])
        read = Meta("read", 1, 100.0, dtype=DATA_TYPES["heart_rate"], patient=0)
        for i, m in enumerate((bad, queued, read)):
            m.tx = SimpleNamespace(id=bytes([i]) * 32)
        fl.lanes[0] = [queued]
        fl.open_ops = fl.phones[1].outstanding = 3
        res = [{"status": 400, "error": "bad body"}, {"status": 503, "error": "pool full", "retry_after": 1}]
        back, wait, pause = fl._answers(0, [bad, read], res, False)
        await asyncio.sleep(0)
        return fl, back, queued, read, fl.work.get_nowait()

    fl, back, queued, read, again = asyncio.run(go())
    assert back == [read] and again == [queued] and fl.lanes[0] == [] and fl.phones[1].resync


def test_a_read_signed_again_after_a_nonce_409_takes_its_member_s_queued_reads_with_it():
    """A read answered 409 "nonce out of order" (the validator dropped the one before it) is signed
    again from the member's nonce read anew; its member's reads still queued in the lane were signed
    past the same gap and go with it (from a review: left in the lane, one of them took a nonce the
    re-signed reads were given, and the next read was refused "nonce conflict")."""
    import asyncio
    from types import SimpleNamespace

    from devices.load.fleet import Fleet
    from devices.load.fleet_model import Meta

    async def go() -> tuple:
        fl = Fleet(["http://127.0.0.1:1"], FleetConfig())
        fl.phones = [FleetPhone(Identity.from_seed(b"fleet 409"), 0, 0, "c")]

        def read(s: int, i: int) -> Meta:
            m = Meta("read", s, 100.0, dtype=DATA_TYPES["heart_rate"], patient=0)
            m.tx = SimpleNamespace(id=bytes([s, i]) * 16)
            return m

        ooo, queued, other = read(0, 1), read(0, 2), read(1, 1)
        fl.lanes[0] = [queued, other]
        fl.open_ops = 3
        back, wait, pause = fl._answers(0, [ooo], [{"status": 409, "error": "nonce out of order: got 7, expected 6"}],
                                        False)
        await asyncio.sleep(0)
        return fl, back, (ooo, queued, other), fl.work.get_nowait()

    fl, back, (ooo, queued, other), again = asyncio.run(go())
    assert back == [] and again == [ooo, queued] and fl.lanes[0] == [other] and fl.staff_resync == {0}
    assert ooo.tries == 1 and queued.tries == 0 and fl.conflicts_resent == 1
