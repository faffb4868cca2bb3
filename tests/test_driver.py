"""The driver's consensus task (node/validator.py) over a real LMDB ledger, without the network."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node import clock
from node.crypto.keys import Identity
from node.forwarding import FORWARD_S
from node.genesis import Params, init_home
from node.mempool import AdmissionError
from node.sidecar import decode_forwarded
from node.tx import Profile, Tx
from node.validator import TICK_S, Validator


def _homes(tmp_path: Path) -> list[Path]:
    return init_home(tmp_path, "driver-test", [f"127.0.0.1:{9000 + i}" for i in range(4)],
                     int(time.time() * 1000), Params(), p2p=[f"127.0.0.1:{9100 + i}" for i in range(4)])


def test_a_block_built_for_a_view_the_replica_left_is_not_proposed(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The producer builds a block in view 0, then the replica leaves view 0 (a view change, or a
    validator restarted into a view the others left) before the consensus task takes the block: it
    is dropped with an INFO line, not handed to the replica, which would refuse it with an error and
    a traceback in the log."""
    v = Validator(_homes(tmp_path)[0])  # validator 0: the primary of view 0
    try:
        async def go() -> None:
            task = asyncio.create_task(v._consensus())
            ex = await v.pipeline.build(v.pipeline.build_tip(), [], 0, v.index, clock.now_ms())
            v.replica.start_view_change(1)
            await v._inbox.put(("propose", ex.block))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if v._inbox.empty():
                    break
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with caplog.at_level(logging.INFO, logger="medchain.validator"):
            asyncio.run(go())
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "block 1 built for view 0 not proposed: the replica is in view 1 (changing)" in caplog.text
        assert v.replica.in_flight() == 0 and v.replica.view == 1
    finally:
        v.close()


class _Sent:
    """Stands in for the p2p adapter's broadcast: these tests are about when the driver forwards."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.times: list[float] = []

    def broadcast(self, data: bytes) -> None:
        self.messages.append(data)
        self.times.append(time.monotonic())

    async def stop(self) -> None:
        pass

    def forwarded(self, k: int) -> list[bytes]:
        return [raw for raw, _ in decode_forwarded(self.messages[k])]


def _backup_with_recorded_net(tmp_path: Path, n: int) -> tuple[Validator, _Sent, list[Tx]]:
    """A backup whose forwarding is recorded, and n profile updates of one sender to submit."""
    v = Validator(_homes(tmp_path)[1])
    net = _Sent()
    v.net = net  # type: ignore[assignment]
    v.admission.forwarding = True
    txs = Tx.build_batch(Identity.from_seed(b"forwarding-test!"), v.chain_id, 1, [Profile("p", "r", "o", bytes(32))] * n)
    return v, net, txs


async def _until(cond: Callable[[], bool], rounds: int = 400) -> None:
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0.005)


def test_a_client_submission_after_a_quiet_spell_is_forwarded_at_once_a_stream_every_forward_s(
        tmp_path: Path) -> None:
    """py-libp2p costs about the same CPU per message whatever its size, so a steady stream of client
    transactions goes to the other validators FORWARD_S at a time; the first one after a quiet spell
    (a phone writing and waiting for each commit) goes within FORWARD_SOON_S."""
    v, net, txs = _backup_with_recorded_net(tmp_path, 3)
    try:
        async def go() -> None:
            assert await v.submit_many([(txs[0].raw, None)]) == [txs[0].id]  # after a quiet spell
            await _until(lambda: bool(net.messages))
            assert len(net.messages) == 1 and net.forwarded(0) == [txs[0].raw]
            v.forwarder.last_client = time.monotonic()  # another client submitted a moment ago: a stream
            assert await v.submit_many([(txs[1].raw, None)]) == [txs[1].id]
            assert await v.submit_many([(txs[2].raw, None)]) == [txs[2].id]
            assert v.forwarder.early is None and len(net.messages) == 1  # waits for the next FORWARD_S
            ticker = asyncio.create_task(v._ticker())
            await _until(lambda: len(net.messages) > 1)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            assert len(net.messages) == 2 and net.forwarded(1) == [txs[1].raw, txs[2].raw]  # one message
            gap = net.times[1] - net.times[0]
            assert gap >= FORWARD_S - TICK_S / 2 - 0.001  # not at the next tick: a bound, not a timing
        asyncio.run(go())
    finally:
        v.close()


def test_a_refused_submission_does_not_end_a_quiet_spell(tmp_path: Path) -> None:
    """A client's retry right after a refusal is the first admitted submission after a quiet spell:
    forwarded at once, not at the next FORWARD_S."""
    v, net, txs = _backup_with_recorded_net(tmp_path, 1)
    try:
        async def go() -> None:
            bad = await v.submit_many([(b"\x92not a transaction", None)])
            assert isinstance(bad[0], AdmissionError)
            assert await v.submit_many([(txs[0].raw, None)]) == [txs[0].id]
            await _until(lambda: bool(net.messages))  # no ticker runs: only the early flush sends it
            assert net.forwarded(0) == [txs[0].raw]
        asyncio.run(go())
    finally:
        v.close()


def test_stop_forwards_what_was_admitted_and_not_yet_forwarded(tmp_path: Path) -> None:
    """A validator stopping (SIGTERM's drain) sends the client transactions it admitted and holds
    for the next forwarding round: they live only in its memory."""
    v, net, txs = _backup_with_recorded_net(tmp_path, 2)

    async def go() -> None:
        v.forwarder.last_client = time.monotonic()  # a stream: waits for the next round
        assert await v.submit_many([(txs[0].raw, None), (txs[1].raw, None)]) == [txs[0].id, txs[1].id]
        assert net.messages == []
        await v.stop()  # closes the stores too
        assert [raw for k in range(len(net.messages)) for raw in net.forwarded(k)] == [txs[0].raw, txs[1].raw]
    asyncio.run(go())


def test_the_consensus_inbox_is_bounded_in_bytes_and_per_peer_and_gives_them_back_as_it_is_read(
        tmp_path: Path) -> None:
    """A peer's frames wait in the consensus inbox; a frame may be up to 32 MiB, so a count alone
    (16,384 frames) let a byzantine peer park gigabytes behind a slow consensus task. Beyond
    INBOX_MAX_BYTES a frame is dropped (PBFT retransmits), and reading frames frees their bytes. Each
    peer holds at most its share (a third of the bound, with four validators): one peer flooding
    validly signed messages filled the whole inbox and had the honest ones dropped."""
    from node.validator import INBOX_MAX_BYTES
    v = Validator(_homes(tmp_path)[1])
    try:
        frame = b"\x00" * (INBOX_MAX_BYTES // 6)
        flooder, *honest = list(v._peer_index)[:1] + [p for p, j in v._peer_index.items() if j not in (0, 1)]
        for _ in range(5):
            v._on_net(flooder, frame)
        assert v._inbox.qsize() == 2  # its share: two such frames
        for p in honest:
            for _ in range(2):
                v._on_net(p, frame)
        assert v._inbox.qsize() == 6 and v._inbox_bytes == 6 * len(frame)  # the others' frames all in
        v._on_net(honest[0], b"\x00" * (INBOX_MAX_BYTES - 6 * len(frame) + 1))  # one byte over the bound
        assert v._inbox.qsize() == 6
        assert v.metrics.registry.get_sample_value("medchain_throttled_total", {"scope": "consensus_backlog"}) == 4

        async def read_all() -> None:  # the consensus task reads them (malformed frames: dropped)
            task = asyncio.create_task(v._consensus())
            while v._inbox.qsize() > 0:
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        asyncio.run(read_all())
        assert v._inbox_bytes == 0 and all(held == [0, 0] for held in v._inbox_peer.values())
        v._on_net(flooder, frame)
        assert v._inbox.qsize() == 1 and v._inbox_bytes == len(frame)
    finally:
        v.close()


def test_a_step_whose_caller_gave_up_waiting_is_not_run_late(tmp_path: Path) -> None:
    """in_consensus queues a step for the consensus task; a caller that timed out (state transfer's
    install) cancels its wait, and the step must not run afterwards with no one waiting for it (an
    installer started on a transfer the caller had already counted as failed)."""
    v = Validator(_homes(tmp_path)[1])
    ran: list[str] = []

    async def step() -> None:
        ran.append("step")

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(v.in_consensus(step), 0.01)  # the consensus task is not running yet
        task = asyncio.create_task(v._consensus())
        await v.in_consensus(lambda: _note(ran))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    try:
        asyncio.run(go())
    finally:
        v.close()
    assert ran == ["later"]


async def _note(ran: list[str]) -> None:
    ran.append("later")


def test_a_wall_clock_stepped_back_does_not_stop_a_validator_s_timers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica's timers (its status heartbeat, the view timer, retransmissions, the censorship
    watch's grace) count monotonic time (clock.timer_ms): when the wall clock steps an hour back
    (NTP, an operator), the heartbeat goes on every status interval. Fed wall-clock time, every timer
    read 'an hour to go': no heartbeat (its peers soon count it cut off), no view change."""
    v = Validator(_homes(tmp_path)[1])
    net = _Sent()
    v.net = net  # type: ignore[assignment]

    async def go() -> None:
        tasks = [asyncio.create_task(v._consensus()), asyncio.create_task(v._ticker())]
        await _until(lambda: len(net.messages) >= 1, rounds=1000)  # the first heartbeat went
        monkeypatch.setattr(clock, "SKEW_MS", clock.SKEW_MS - 3_600_000)
        sent = len(net.messages)
        await _until(lambda: len(net.messages) >= sent + 2, rounds=1000)  # two status intervals
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(net.messages) >= sent + 2, f"{len(net.messages) - sent} heartbeats after the step"
    try:
        asyncio.run(go())
    finally:
        v.close()
