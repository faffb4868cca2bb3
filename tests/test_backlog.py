"""The client backlog bound (node/backlog.py): pure, in the pool, and on a real validator."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from devices.net.localnet import make_network
from node.backlog import HALF_LIFE_S, RETRY_MAX_S, RETRY_MIN_S, Backlog
from node.crypto.keys import Identity
from node.genesis import Params
from node.mempool import AdmissionError, Mempool, Refusal
from node.tx import Profile, Tx
from node.wire import encode

CHAIN = "backlog-test"


def _commit_at(b: Backlog, rate: float, seconds: float, t0: float = 0.0, step: float = 0.1) -> float:
    t = t0
    while t < t0 + seconds - 1e-9:
        t += step
        b.committed(int(rate * step), t)
    return t


def test_a_fresh_chain_takes_the_floor_and_a_busy_one_its_rate_times_the_wait() -> None:
    b = Backlog(2.0, floor=4000, cap=200_000)
    assert b.limit(0.0) == 4000
    t = _commit_at(b, 3000.0, 20.0)
    assert 5700 <= b.limit(t) <= 6000  # 3000/s for 2 s, the rate's memory nearly full after 20 s
    assert Backlog(2.0, floor=10, cap=100).limit(0.0) == 10
    capped = Backlog(2.0, floor=10, cap=100)
    _commit_at(capped, 3000.0, 20.0)
    assert capped.limit(20.0) == 100


def test_a_stalled_chain_takes_on_less_and_less() -> None:
    """No commits (a view change, a stalled disk): the measured rate decays, so the bound falls back to
    the floor instead of taking on seconds of work that nothing drains."""
    b = Backlog(2.0, floor=100, cap=200_000)
    t = _commit_at(b, 2000.0, 20.0)
    high = b.limit(t)
    assert high > 3000
    assert b.limit(t + HALF_LIFE_S + 0.5) < 0.7 * high
    assert b.limit(t + 20 * HALF_LIFE_S) == 100


def test_the_rate_moves_by_the_half_life_once_a_window_has_passed_and_each_window_counts_afresh() -> None:
    """The arithmetic, exactly: a window closes at WINDOW_S (0.5 s) or later, the measured rate enters
    with weight 1 - 0.5 ** (dt / HALF_LIFE_S), and the next window counts from nothing."""
    b = Backlog(2.0, floor=1, cap=10**9)
    b.committed(0, 0.0)  # opens the window
    b.committed(10, 0.4)
    assert b.rate == 0.0  # not yet half a second
    b.committed(0, 0.5)  # exactly the window: the rate moves
    keep = 0.5 ** (0.5 / HALF_LIFE_S)
    assert b.rate == pytest.approx(10 / 0.5 * (1 - keep))
    first = b.rate
    b.committed(100, 1.5)  # a window of one second, 100 committed in it (none carried over)
    keep = 0.5 ** (1.0 / HALF_LIFE_S)
    assert b.rate == pytest.approx(first * keep + 100 * (1 - keep))
    second = b.rate
    b.committed(0, 2.5)  # an empty window: only decay
    assert b.rate == pytest.approx(second * keep)


def test_the_current_rate_decays_by_the_half_life_only_after_two_windows_idle() -> None:
    b = Backlog(2.0, floor=1, cap=10**9)
    b.committed(0, 0.0)
    b.committed(500, 1.0)
    rate = b.rate
    assert b.current_rate(1.0 + 2 * 0.5) == rate  # idle exactly two windows: not yet decayed
    assert b.current_rate(1.0 + 1.2) == pytest.approx(rate * 0.5 ** (1.2 / HALF_LIFE_S))
    assert b.current_rate(1.0 + HALF_LIFE_S) == pytest.approx(rate / 2)
    assert Backlog(2.0, 1, 1).current_rate(5.0) == 0.0  # nothing committed yet


def test_the_status_reports_the_rate_the_bound_and_what_was_taken_on_and_refused() -> None:
    b = Backlog(2.0, floor=10, cap=10**9)
    b.committed(0, 0.0)
    b.committed(1000, 1.0)
    b.refused = 7
    rate = b.current_rate(1.5)
    assert b.status(42, 1.5) == {"commit_rate": round(rate, 1), "max_wait_s": 2.0, "limit": int(rate * 2.0),
                                 "taken_on": 42, "refused": 7}
    assert b.status(0, 30.0)["limit"] == 10 and b.status(0, 30.0)["commit_rate"] < 0.1  # stalled: the floor


def test_retry_after_is_half_the_wait_within_bounds() -> None:
    assert Backlog(2.0, 1, 1).retry_after() == 1.0
    assert Backlog(0.1, 1, 1).retry_after() == RETRY_MIN_S
    assert Backlog(60.0, 1, 1).retry_after() == RETRY_MAX_S


@pytest.mark.parametrize("args", [(0.0, 1, 1), (-1.0, 1, 1), (1.0, 0, 1), (1.0, 5, 4)])
def test_nonsense_bounds_are_refused(args: tuple[float, int, int]) -> None:
    with pytest.raises(ValueError, match="backlog bound"):
        Backlog(*args)


def _tx(seed: str, nonce: int = 1) -> Tx:
    ident = Identity.from_seed(seed.encode())
    return Tx.build(ident, CHAIN, nonce, Profile(seed, "nurse", "Ward", ident.box_public))


def test_at_the_bound_a_client_is_refused_not_evicted_for_and_a_light_client_still_gets_in() -> None:
    pool = Mempool(capacity=1000, origin_share=0.5)
    for i in range(10):  # a heavy client fills the bound
        assert pool.admit(_tx(f"heavy {i}"), 0, 0.0, origin="10.0.0.1", limit=10) == []
    with pytest.raises(AdmissionError) as exc:
        pool.admit(_tx("heavy 10"), 0, 0.0, origin="10.0.0.1", limit=10)
    assert exc.value.kind is Refusal.OVERLOADED and exc.value.retry_after and "overloaded" in exc.value.reason
    assert len(pool) == 10 and pool.evictions == 0  # nothing admitted was dropped for it
    # a client holding less than its share (half the bound) still gets in, up to twice the bound
    for i in range(5):
        pool.admit(_tx(f"light {i}"), 0, 0.0, origin="10.0.0.2", limit=10)
    with pytest.raises(AdmissionError, match="overloaded"):
        pool.admit(_tx("light 5"), 0, 0.0, origin="10.0.0.2", limit=10)
    for i in range(5):
        pool.admit(_tx(f"third {i}"), 0, 0.0, origin="10.0.0.3", limit=10)
    assert len(pool) == 20
    with pytest.raises(AdmissionError, match="overloaded"):  # twice the bound: nobody
        pool.admit(_tx("fourth"), 0, 0.0, origin="10.0.0.4", limit=10)
    # forwarded batches (admitted by another validator) are bounded by the capacity only
    pool.admit(_tx("forwarded"), 0, 0.0, forwarded=True, origin="peer 2", limit=10)
    assert len(pool) == 21


def _post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_real_validator_refuses_what_it_cannot_commit_soon_with_503_and_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh validator (no commit rate measured yet) takes on two blocks' worth from one client; the
    rest of the batch gets 503 with a Retry-After (half the configured wait) and is not stored; after
    the blocks commit, the refused transactions are admitted when sent again."""
    monkeypatch.setenv("MEDCHAIN_MAX_QUEUE_S", "6")
    (n,) = make_network(tmp_path, 1, params=Params(block_max_txs=10, block_interval_ms=500, sender_rate=1e5,
                                                  sender_burst=1e5))
    n.start()
    try:
        chain = json.loads(urllib.request.urlopen(n.url + "/v1/status", timeout=5).read())["chain_id"]
        txs = [Tx.build(Identity.from_seed(b"s%d" % i), chain, 1,
                        Profile(f"s{i}", "nurse", "Ward", Identity.from_seed(b"s%d" % i).box_public))
               for i in range(60)]
        res = _post(n.url + "/v1/txs", encode([t.raw for t in txs]))["results"]
        statuses = [r["status"] for r in res]
        assert statuses[:20] == [202] * 20, statuses  # the floor: two blocks of 10
        assert statuses[20:] == [503] * 40, statuses
        assert all(r["retry_after"] == 3.0 and "overloaded" in r["error"] for r in res[20:]), res[20]
        st = json.loads(urllib.request.urlopen(n.url + "/v1/status", timeout=5).read())
        assert st["admission"]["limit"] >= 20 and st["admission"]["max_wait_s"] == 6.0
        one = json.loads(urllib.request.urlopen(f"{n.url}/v1/tx/{txs[30].id.hex()}", timeout=5).read())
        assert one["status"] != "pending"  # refused: not in the pool
        metrics = urllib.request.urlopen(n.url + "/metrics", timeout=5).read().decode()
        assert 'medchain_tx_rejected_total{reason="overloaded"}' in metrics
        assert "medchain_admission_backlog_limit" in metrics
        assert 'medchain_p2p_frames_dropped_total{reason="expired"}' in metrics
        # the pool drains block by block; the refused ones get in once there is room again
        pending = txs[20:]
        for _ in range(60):
            if not pending:
                break
            res = _post(n.url + "/v1/txs", encode([t.raw for t in pending]))["results"]
            assert all(r["status"] in (202, 503) for r in res), res
            pending = [t for t, r in zip(pending, res, strict=True) if r["status"] == 503]
            time.sleep(0.5)
        assert not pending
    finally:
        n.stop()


def test_a_senders_later_nonces_behind_a_refused_one_are_refused_the_same_way(tmp_path: Path) -> None:
    """One sender's run of nonces in one batch, past the backlog bound: the first refused gets 503
    (overloaded), and so does every later nonce of that sender (held back, not a permanent 409
    "nonce out of order"); sent again in order once the chain has room, every one is admitted.
    Another sender in the same batch is not held back by it."""
    from node import clock
    from node.execution import build_block
    from node.genesis import init_home
    from node.validator import Validator

    (home,) = init_home(tmp_path, CHAIN, ["127.0.0.1:1"], int(time.time() * 1000),
                        Params(block_max_txs=10, sender_rate=1e5, sender_burst=1e5))
    v = Validator(home)
    try:
        a, b = Identity.from_seed(b"patient a"), Identity.from_seed(b"patient b")
        run = [Tx.build(a, v.chain_id, k, Profile(f"a{k}", "patient", "", a.box_public)) for k in range(1, 31)]
        other = Tx.build(b, v.chain_id, 1, Profile("b", "patient", "", b.box_public))
        res = v.submit_many_sync([(t.raw, None) for t in run[:25]] + [(other.raw, None)] + [(t.raw, None)
                                                                                          for t in run[25:]])
        assert [isinstance(r, bytes) for r in res[:20]] == [True] * 20  # the floor: two blocks of 10
        refused = res[20:25] + res[26:]
        assert all(isinstance(r, AdmissionError) and r.kind is Refusal.OVERLOADED for r in refused), refused
        assert all(r.retry_after == refused[0].retry_after for r in refused)
        assert "held back" in refused[1].reason and "held back" not in refused[0].reason
        assert isinstance(res[25], AdmissionError) and res[25].kind is Refusal.OVERLOADED  # the bound, not a hold
        assert "held back" not in res[25].reason
        # a later batch with only later nonces (the client sent on before its Retry-After): still held
        # back, not 409; a sender with no refusal behind it gets the plain 409
        c = Identity.from_seed(b"patient c")
        gap = Tx.build(c, v.chain_id, 2, Profile("c", "patient", "", c.box_public))
        later = v.submit_many_sync([(run[27].raw, None), (gap.raw, None)])
        assert later[0].kind is Refusal.OVERLOADED and "nonce 21 of this sender" in later[0].reason, later[0]
        assert later[1].kind is Refusal.CONFLICT and "out of order" in later[1].reason, later[1]
        ex = build_block(v.pipeline.head_tip(), v.mempool.batch(20), v.chain_id, 0, 0, clock.now_ms())
        v.committer.write(ex.block, ex, [], [])  # the first twenty commit
        v.mempool.remove(ex.txs)
        again = v.submit_many_sync([(t.raw, None) for t in run[20:]])
        assert all(isinstance(r, bytes) for r in again), again
        # the counter (increased once a batch) counts each admission, and no refusal
        assert v.metrics.registry.get_sample_value("medchain_tx_admitted_total") == 20 + 10
    finally:
        v.close()
