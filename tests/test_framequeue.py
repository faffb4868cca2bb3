"""node/p2p/framequeue.py: a peer's outbound queue, bounded in frames and bytes, oldest first out."""

from __future__ import annotations

import threading

from node.p2p.framequeue import FrameQueue


def test_a_peer_that_never_reads_holds_at_most_the_byte_bound_queued_toward_it() -> None:
    """A review queued 2 GB toward a peer that kept its connection open and never read (10,000
    frames of up to 32 MiB): the bytes are bounded now, the newest frames kept."""
    q = FrameQueue(10_000, max_bytes=10 * 1024)
    drops = sum(q.put((float(i), bytes([i]) * 1024)) for i in range(100))
    assert q.queued_bytes == 10 * 1024 and len(q) == 10 and drops == 90
    assert [t for t, _ in q] == [float(i) for i in range(90, 100)]
    assert q.put((100.0, b"x" * 50 * 1024)) == 10 and list(q) == [(100.0, b"x" * 50 * 1024)]  # one over: alone
    assert q.popleft()[0] == 100.0 and q.queued_bytes == 0


def test_the_frame_bound_and_the_byte_count_hold_while_another_thread_takes() -> None:
    q = FrameQueue(50, max_bytes=1 << 30)
    stop = threading.Event()

    def take() -> None:
        while not stop.is_set() or q:
            try:
                q.popleft()
            except IndexError:
                pass
    t = threading.Thread(target=take)
    t.start()
    for _ in range(100_000):
        q.put((0.0, b"ab"))
        assert len(q) <= 50
    stop.set()
    t.join()
    assert len(q) == 0 and q.queued_bytes == 0  # every byte added was dropped or taken, counted once
