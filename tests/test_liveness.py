"""Liveness at n = 7 with two faults at a time (issue 19): no honest replica is left outside the working view.

`medchain faults --seed 11 --steps 8 --validators 7` once ended with five validators in view 1 and two
waiting for view 2: the two had sent VIEW-CHANGE for view 1 and held 2f+1 of them, were then cut off (or
paused) before the NEW-VIEW reached them, and their escalation timer ran out while they could hear no
one, so they asked for view 2, where no one else would ever follow. These are that case on the seeded
simulated network, and the rules that bring a replica back.
"""

from __future__ import annotations

import pytest

from node.consensus import Broadcast, Commit, PrePrepare
from tests.consensus_sim import SimNet, make_block, signed

N, Q = 7, 5
STRANDED = (5, 6)


def _same_view(net, replicas):
    return {(net.replicas[i].view, net.replicas[i].changing) for i in replicas}


def _cut_off(net, group):
    net.cut = {frozenset((g, j)) for g in group for j in range(net.n) if j not in group}
    net.queue = [(d, raw) for d, raw in net.queue if d not in group]  # in flight to them: dropped at the cut


def _step_until(net, cond, limit=20_000):
    """Deliver one message at a time (100 ms ticks when none is in flight) until `cond` holds."""
    for _ in range(limit):
        if cond():
            return True
        if net.queue:
            net.step()
        else:
            net.tick_all()
    return False


# seeds whose message order has 5 and 6 holding 2f+1 view changes for view 1 before its NEW-VIEW reaches them
@pytest.mark.parametrize("seed", [1900, 1908, 1909])
@pytest.mark.parametrize("fault", ["cut", "pause"])
def test_two_replicas_cut_off_while_waiting_for_a_new_view_rejoin_it(fault, seed):
    net = SimNet(N, seed)
    net.run(3)
    net.crash(0)  # the primary and a backup go while work waits: the other five change to view 1
    net.crash(3)
    # 5 and 6 hold 2f+1 view changes for view 1 and wait for its NEW-VIEW
    assert _step_until(net, lambda: all(net.replicas[i].changing and net.replicas[i].view == 1
                                        and len(net.replicas[i].state.vcs.get(1, {})) >= Q for i in STRANDED))
    if fault == "cut":
        _cut_off(net, STRANDED)
    else:
        for i in STRANDED:
            net.pause(i)
    net.restart(0)
    net.restart(3)
    others = [i for i in range(N) if i not in STRANDED]
    net.run(6, max_ticks=400, idle_after=True, until=lambda: all(len(net.out[i]) >= 6 for i in others))
    assert _same_view(net, others) == {(1, False)}  # view 1 formed without them
    net.run(10, max_ticks=80, idle_after=True, until=lambda: False)  # the fault outlasts their escalation timeout
    if fault == "cut":
        net.cut = set()
    else:
        for i in STRANDED:
            net.resume(i)
    net.run(14, max_ticks=400, idle_after=True)
    net.run(14, max_ticks=100, idle_after=True, until=lambda: False)  # the load has stopped: a quiet spell
    net.check_agreement([d.block for o in net.out for d in o], count=14)
    trace = [(i, net.replicas[i].view, net.replicas[i].changing, len(net.out[i])) for i in range(N)]
    assert _same_view(net, range(N)) == {(1, False)}, trace


def test_replicas_left_in_a_higher_view_are_reached_by_the_next_view_change():
    """5 and 6 wait in view 2 while the others work on in view 0 (however they got there: they must not act
    in a lower view again). When the primary then fails, the four left ask for view 1 and count only four
    VIEW-CHANGEs for it, and two replicas in a later view are f, too few to pull them up (f+1): unless a
    VIEW-CHANGE for a later view counts as giving up on view 1 too, the six live replicas never form a view."""
    net = SimNet(N, 1950)
    net.run(3)
    for i in STRANDED:
        net.send(i, net.replicas[i].start_view_change(2))
    net.run(6, max_ticks=50, idle_after=True)
    assert _same_view(net, range(5)) == {(0, False)} and _same_view(net, STRANDED) == {(2, True)}
    net.crash(0)
    net.run(10, max_ticks=600, idle_after=True)
    live = range(1, N)
    net.check_agreement([d.block for o in net.out for d in o], count=10)
    assert _same_view(net, live) == {(2, False)}, [(i, net.replicas[i].view, net.replicas[i].changing) for i in live]


def test_a_replica_that_cannot_hear_the_new_primary_gets_the_new_view_from_the_others():
    """The link between 6 and the primary of view 1 is cut (or that primary withholds its NEW-VIEW from 6):
    6 holds 2f+1 VIEW-CHANGEs for view 1 and hears everyone else, so without the NEW-VIEW it would escalate
    to view 2 alone. Any replica in view 1 answers 6's status heartbeat (which names the view before the
    one it waits for) with the NEW-VIEW, which is self-certifying."""
    net = SimNet(N, 1960)
    net.run(3)
    net.cut = {frozenset((1, 6))}
    net.crash(0)
    net.run(8, max_ticks=400, idle_after=True)
    net.run(8, max_ticks=100, idle_after=True, until=lambda: False)
    live = range(1, N)
    net.check_agreement([d.block for o in net.out for d in o], count=8)
    assert _same_view(net, live) == {(1, False)}, [(i, net.replicas[i].view, net.replicas[i].changing) for i in live]


class _EquivocatingPrimaryNet(SimNet):
    """Replica 0 is byzantine (MEDCHAIN_BYZANTINE=equivocate, and worse): each block it proposes goes to
    half the others, a conflicting one (same transactions and parent) to the rest, and it sends a COMMIT
    for that second block too. Otherwise it runs the honest code."""

    BYZ = 0

    def send(self, src, actions):
        if src != self.BYZ:
            return super().send(src, actions)
        for a in actions:
            pp = a.msg if isinstance(a, Broadcast) else None
            if not isinstance(pp, PrePrepare) or pp.tag != PrePrepare.tag or pp.block.header.view != pp.view:
                super().send(src, [a])
                continue
            h = pp.block.header
            alt = make_block(h.seq, self.n, view=h.view, txs=pp.block.txs, prev=h.prev_hash, proposer=src, salt=b"B")
            others = [j for j in range(self.n) if j != src]
            half = others[: len(others) // 2]
            for j in others:
                if j in half:
                    self._put(src, j, pp)
                else:
                    self._put(src, j, signed(PrePrepare, src, pp.view, h.seq, alt.hash, block=alt))
                    self._put(src, j, signed(Commit, src, pp.view, h.seq, alt.hash))


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("killed", [2, 5])  # one that gets the primary's first block, one that gets its second
def test_an_equivocating_primary_and_a_killed_replica_at_once(killed, seed):
    """f = 2 at n = 7: the primary equivocates and a replica is killed (SIGKILL: its disk survives). No two
    honest replicas deliver different blocks at any height, the five honest ones left move to a new view
    and commit, and the killed one, restarted, catches up and joins that view."""
    net = _EquivocatingPrimaryNet(N, 1970 + seed)
    net.crash(killed)
    honest = [i for i in range(1, N) if i != killed]
    net.run(8, max_ticks=600, idle_after=True, until=lambda: all(len(net.out[i]) >= 8 for i in honest))
    assert all(net.replicas[i].view >= 1 for i in honest)
    assert any(e["kind"] == "equivocating-primary" and e["validator"] == 0
               for i in honest for e in net.replicas[i].evidence)
    net.restart(killed)
    net.run(12, max_ticks=600, idle_after=True, until=lambda: all(len(net.out[i]) >= 12 for i in range(1, N)))
    net.run(12, max_ticks=100, idle_after=True, until=lambda: False)
    net.check_agreement([d.block for o in net.out for d in o], replicas=list(range(1, N)), count=12)
    assert len(_same_view(net, range(1, N))) == 1 and not net.replicas[1].changing


@pytest.mark.parametrize("seed", range(3))
def test_replicas_cut_off_just_after_the_primary_slowed_down_do_not_leave_alone(seed):
    """`medchain faults --seed 13 --steps 8 --validators 7`: the primary was slow for a moment, then 3 and 4
    were cut off; 1.9 s later, before the 2 s in which it counts whom it has heard had passed, 4's view timer
    ran out and it asked for view 1 alone, while the primary went on with the other five. A replica counts as
    heard only one that sent something in the last two heartbeats (1 s here), so cut off it stops its timer
    within that time: it can leave (or, since, suspect the view) only if the view had been stalled for most of
    the timeout before the cut."""
    net = SimNet(N, 1980 + seed)
    net.run(4)
    net.run(4, max_ticks=5, idle_after=True, until=lambda: False)  # quiet: no view timer runs
    while net.now - net.replicas[4].state.last_status != 200:  # heartbeats go every 500 ms: the next one in 300 ms
        net.tick_all(pending=False)
    net.pause(0)  # work arrives; the primary is slow for 300 ms, in which the others' heartbeats arrive
    for _ in range(3):
        net.tick_all(pending=True)
        while net.queue:
            net.step()
    assert net.replicas[4].state.last_status == net.now
    _cut_off(net, (3, 4))
    net.resume(0)
    net.run(10, max_ticks=30, idle_after=True, until=lambda: False)  # the cut lasts 3 s
    assert _same_view(net, (0, 1, 2, 5, 6)) == {(0, False)} and len(net.out[1]) == 10
    # nor do they suspect the view (after the heal two suspicions and one byzantine would make f+1)
    assert not net.replicas[3].state.suspecting and not net.replicas[4].state.suspecting
    net.cut = set()
    net.run(14, max_ticks=300, idle_after=True)
    net.run(14, max_ticks=100, idle_after=True, until=lambda: False)
    net.check_agreement([d.block for o in net.out for d in o], count=14)
    assert _same_view(net, range(N)) == {(0, False)}, [(i, net.replicas[i].view, net.replicas[i].changing)
                                                        for i in range(N)]


def test_a_replica_whose_view_timer_runs_out_alone_stays_in_the_working_view():
    """6 holds work the others never got (its forwarded batch was lost) and its view timer runs out while
    the view is fine for everyone else. Sending VIEW-CHANGE on that timer alone left it in view 1 for good:
    one VIEW-CHANGE is not the f+1 that makes others follow, and it may not come back. It says SUSPECT
    instead; the view changes only on 2f+1 of those, and its suspicion ends with the next delivery."""
    net = SimNet(N, 1990)
    net.run(3)
    for _ in range(40):  # 4 s: only 6 has work waiting
        net.tick_all(pending=lambda r: r.index == 6)
        while net.queue:
            net.step()
    assert _same_view(net, range(N)) == {(0, False)}, [(i, net.replicas[i].view) for i in range(N)]
    assert net.replicas[6].state.suspecting
    net.run(6, max_ticks=200, idle_after=True)  # the primary proposes again
    assert not net.replicas[6].state.suspecting
    net.check_agreement([d.block for o in net.out for d in o], count=6)
    assert _same_view(net, range(N)) == {(0, False)}


def test_f_plus_one_suspects_bring_in_replicas_with_no_work_of_their_own():
    """The primary and 3 are down; only 1, 2 and 4 hold the waiting work (5 and 6 restarted with empty
    mempools). Three SUSPECTs are f+1, so at least one honest replica's timer ran out: 5 and 6 join, which
    makes the 2f+1 that change the view."""
    net = SimNet(N, 1991)
    net.run(3)
    net.crash(0)
    net.crash(3)
    live = (1, 2, 4, 5, 6)
    for _ in range(60):
        net.tick_all(pending=lambda r: r.index in (1, 2, 4))
        while net.queue:
            net.step()
        if _same_view(net, live) == {(1, False)}:
            break
    assert _same_view(net, live) == {(1, False)}, [(i, net.replicas[i].view, net.replicas[i].changing) for i in live]
