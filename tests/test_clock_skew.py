"""A skewed clock (node/clock.py).

Unit tests of the block-time bounds, then four real validator processes: validator 0's clock is 5
minutes fast (MEDCHAIN_CLOCK_SKEW_MS), validator 1's 5 minutes slow. Clients with correct clocks
load all four. Validator 0 is the primary of view 0, and its blocks are refused as too far in the
future. Validator 1 leads view 1 and stamps its blocks 5 minutes back. The others count the chain's
time from the genesis time on their monotonic clocks, so they refuse those blocks as lagging. A slow
primary after honest blocks would stamp its parent's time instead, and be refused once the chain's
time had stood still for MAX_LAG_MS. The network moves on to view 2 and
keeps committing. Block times stay monotonic and near real time. Every validator's log says what it
refused and why. A client gets a clear error from either skewed validator, not a hang."""

from __future__ import annotations

import asyncio
import os
import re
import time

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import make_network, start_all
from devices.patient.client import ApiError, NodeClient
from node import clock
from node.block import Block
from node.crypto.keys import Identity
from node.genesis import Params
from node.tx import Profile, Tx

SKEW_MS = 5 * 60 * 1000


# ---- the bounds, pure --------------------------------------------------------------------------
def test_a_proposal_too_far_ahead_of_our_clock_is_refused_and_says_whose_clock_is_off() -> None:
    now = clock.now_ms()
    c = clock.ChainClock(now)
    assert c.refusal(now + clock.MAX_FUTURE_MS - 1000, now, 2) is None
    why = c.refusal(now + SKEW_MS, now, 0)
    assert why and "300.0 s ahead of this validator's clock" in why and "validator 0's clock is fast" in why
    # the same block seen by a validator whose own clock is slow: it says its own clock is off
    why = c.refusal(now, now - SKEW_MS, 2)
    assert why and "this validator's clock is 300.0 s behind the chain's" in why


def test_a_chain_whose_time_stands_still_is_refused_once_it_lags_the_monotonic_count() -> None:
    now = clock.now_ms()
    c = clock.ChainClock(now - 60_000)  # at start the count is lenient: the head may be old
    assert c.refusal(now - 60_000, now, 1) is None
    c.committed(now)  # a fresh block: the chain's time is now
    later = now + clock.MAX_LAG_MS + 1000
    c.offset += later - now  # as if MAX_LAG_MS + 1 s went by on the monotonic clock
    frozen = now  # a slow proposer keeps stamping its parent's time
    why = c.refusal(frozen, later, 1)
    assert why and "behind the chain's time" in why and "validator 1's clock is slow or stuck" in why
    assert c.refusal(later, later, 2) is None  # an honest block at the same moment
    c.committed(frozen)  # an old time committed later does not move the count back
    assert c.refusal(frozen, later, 1) is not None


# ---- real processes -------------------------------------------------------------------------------
async def _status(node) -> dict:
    async with NodeClient(node.url) as c:
        return await c.status()


def test_one_validator_fast_and_one_slow_the_network_changes_view_and_keeps_committing(tmp_path) -> None:
    # signed requests must be within 2 minutes (default 5): both skewed validators are then clearly outside
    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5, request_skew_ms=120_000))
    nodes[0].env["MEDCHAIN_CLOCK_SKEW_MS"] = str(SKEW_MS)
    nodes[1].env["MEDCHAIN_CLOCK_SKEW_MS"] = str(-SKEW_MS)
    start_all(nodes)
    try:
        asyncio.run(_scenario(nodes))
    finally:
        for n in nodes:
            n.stop()
    logs = [n.log_tail(2_000_000) for n in nodes]
    for lg in logs:
        assert "Traceback" not in lg, lg[-3000:]
    assert "CLOCK SKEW INJECTED" in logs[0] and "CLOCK SKEW INJECTED" in logs[1]
    for honest in logs[2:]:
        # the fast primary of view 0 and the slow primary of view 1, each refused with its reason
        assert re.search(r"from validator 0 \(view 0\): its time is (29\d|30\d)\.\d s ahead of this validator's clock "
                         r"\(at most 10\.0 s\); validator 0's clock is fast", honest), honest[-3000:]
        assert "from validator 1 (view 1): its time is" in honest and "validator 1's clock is slow or stuck" in honest, \
            honest[-3000:]
    # the slow validator refuses honest blocks and says its own clock is to blame
    assert "(view 2): its time is" in logs[1] and "behind the chain's: fix this machine's clock" in logs[1], \
        logs[1][-3000:]
    # the fast one accepts them, and says its clock is ahead of the chain's
    assert re.search(r"this validator's clock is (299|30\d)\.\d s ahead of the chain's", logs[0]), logs[0][-3000:]


async def _scenario(nodes) -> None:
    committed: list[str] = []
    stop = asyncio.Event()
    load = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"skew-", senders=12, avoid=None))
    seen: dict[int, float] = {}  # height -> real time (ms) it was first seen committed on validator 3
    try:
        deadline = time.monotonic() + 90
        settled = None  # when view 2 (an honest primary) was first seen
        while time.monotonic() < deadline:
            st = await _status(nodes[3])
            now = time.time() * 1000
            for h in range(max(seen, default=0) + 1, st["height"] + 1):
                seen[h] = now
            if st["consensus"]["view"] >= 2 and not st["consensus"]["view_changing"] and settled is None:
                settled = (time.monotonic(), st["height"])
            if settled and time.monotonic() - settled[0] > 8:
                break
            await asyncio.sleep(0.25)
        assert settled, f"the network never left the skewed primaries' views: {st['consensus']}"
        st = await _status(nodes[3])
        assert st["height"] > settled[1] + 5, "no commits after the view change"
        assert st["consensus"]["view"] % 4 in (2, 3), st["consensus"]
        assert st["consensus"]["block_times_refused"]["future"] >= 1, st["consensus"]
        assert st["consensus"]["block_times_refused"]["lagging"] >= 1, st["consensus"]

        # a client with a correct clock gets a clear refusal from either skewed validator, not a hang
        chain = st["chain_id"]
        ident = Identity.from_seed(b"skew-client")
        for i, way in ((0, "behind"), (1, "ahead of")):
            async with NodeClient(nodes[i].url) as c:
                t0 = time.monotonic()
                try:
                    await c.upload(os.urandom(100), ident, chain)
                    raise AssertionError(f"validator {i} accepted a signed upload 5 minutes off its clock")
                except ApiError as exc:
                    assert exc.status == 401 and re.search(
                        rf"too far from this validator's clock: (29\d|30\d) s {way} it \(at most 120 s\)", exc.reason), exc
                assert time.monotonic() - t0 < 5
        # and transactions sent to either skewed validator commit
        for i in (0, 1):
            async with NodeClient(nodes[i].url) as c:
                tx = Tx.build(Identity.from_seed(b"skew-direct-%d" % i), chain, 1, Profile("x", "r", "o", bytes(32)))
                await c.submit(tx.raw)
                assert (await c.wait_committed(tx.id.hex(), 30))["status"] == "committed", i
    finally:
        stop.set()
        await load
    await converged(nodes, timeout=60, same_view=False)
    await assert_committed(nodes, committed)
    assert len(committed) > 50

    # block times: monotonic, never ahead of when the block was seen, never far behind it
    async with NodeClient(nodes[3].url) as c:
        top = (await c.status())["height"]
        times = [Block.decode(await c.block_raw(h)).header.time_ms for h in range(1, top + 1)]
    assert times == sorted(times), "block times went back"
    for h, t in enumerate(times, 1):
        if h in seen:
            assert t <= seen[h] + clock.MAX_FUTURE_MS, (h, t, seen[h])
            assert seen[h] - t <= clock.MAX_LAG_MS + 15_000, f"block {h}'s time lags {seen[h] - t:.0f} ms"
