"""How much client work a validator takes on: bounded by time, not only by count.

The mempool's capacity (a genesis parameter, 200,000 by default) bounds what the pool may hold for
the network, forwarded transactions included. Filled by clients, that is minutes of work at a few
thousand transactions a second: every transaction admitted then waits minutes, and the validator
holds hundreds of MB of them. So for a client's transaction the pool counts as full at the bound:
what the chain commits in `max_wait_s` at its measured rate (node config limits.max_queue_s). At
the bound a client is refused (503 with a Retry-After: it comes back, here or at another
validator) unless its origin holds less than its share of the bound, up to twice the bound
(node/mempool.py); nothing admitted is evicted for it. A client batch is
refused whole, before it is decoded, while the verifier already holds the bound's worth. Forwarded
batches are not bounded here: another validator admitted them, and a block may name them.

Pure: the caller passes the clock.
"""

from __future__ import annotations

MAX_WAIT_S = 2.0  # default: two seconds of the chain's work (node config limits.max_queue_s)
HALF_LIFE_S = 2.0  # the commit rate's memory
WINDOW_S = 0.5  # commits are counted over at least this long before the rate moves
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0


class Backlog:
    def __init__(self, max_wait_s: float, floor: int, cap: int) -> None:
        """`floor`: the bound however slow the chain has been (two blocks' worth, so an idle or fresh
        chain still fills the block it builds and the next); `cap`: never more than this (the pool's
        capacity)."""
        if max_wait_s <= 0 or floor < 1 or cap < floor:
            raise ValueError(f"backlog bound: max_wait_s {max_wait_s} > 0 and 1 <= floor {floor} <= cap {cap}")
        self.max_wait_s, self.floor, self.cap = max_wait_s, floor, cap
        self.rate = 0.0  # committed transactions per second, decayed
        self._count = 0  # committed since the window opened
        self._since: float | None = None  # when the window opened
        self.refused = 0

    def committed(self, n: int, now: float) -> None:
        """`n` transactions committed at `now`."""
        if self._since is None:
            self._since = now
        self._count += n
        dt = now - self._since
        if dt >= WINDOW_S:
            keep = 0.5 ** (dt / HALF_LIFE_S)
            self.rate = self.rate * keep + (self._count / dt) * (1 - keep)
            self._count, self._since = 0, now

    def current_rate(self, now: float) -> float:
        """The rate, decayed over the time since commits were last counted: a stalled chain (a view
        change, a stalled disk) takes on less and less."""
        if self._since is None:
            return 0.0
        idle = now - self._since
        return self.rate * 0.5 ** (idle / HALF_LIFE_S) if idle > 2 * WINDOW_S else self.rate

    def limit(self, now: float) -> int:
        return min(self.cap, max(self.floor, int(self.current_rate(now) * self.max_wait_s)))

    def retry_after(self) -> float:
        """When a refused client should come back: half the bound's wait, so the pool still holds work
        when it does (it never runs dry between a client's retries), and a stalled chain is asked
        about no more often than that."""
        return min(RETRY_MAX_S, max(RETRY_MIN_S, self.max_wait_s / 2))

    def status(self, pending: int, now: float) -> dict[str, float | int]:
        """For /v1/status and /metrics."""
        return {"commit_rate": round(self.current_rate(now), 1), "max_wait_s": self.max_wait_s,
                "limit": self.limit(now), "taken_on": pending, "refused": self.refused}
