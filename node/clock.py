"""A validator's clocks, in one place: the wall clock it stamps and checks block and request times
with, and the chain's pace as its monotonic clock counts it.

- `now_ms()`: wall-clock ms, plus MEDCHAIN_CLOCK_SKEW_MS when that is set. That variable is fault
  injection for tests (like node/faults.py's): it makes one validator's clock run minutes ahead or
  behind without touching the machine's.
- `ChainClock`: a fresh proposal is refused when its time is more than MAX_FUTURE_MS ahead of our
  wall clock (a fast proposer), or more than MAX_LAG_MS behind the chain's time as this validator
  counts it. That count is the highest (block time - monotonic time) of the blocks it committed, plus
  monotonic time now. It does not depend on our wall clock's offset. A proposer whose clock is
  slow stamps each block with its parent's time (block times never go back), so the chain's time
  would stand still while it leads; it is refused once that has lasted MAX_LAG_MS, and the view
  changes. A validator whose own clock is off logs that clearly, at most once a minute.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict

from node.block import Block
from node.execution import MAX_FUTURE_MS  # a proposal's time may run ahead of our clock by this much

log = logging.getLogger("medchain.clock")

MAX_LAG_MS = 15_000  # and behind the chain's pace (our monotonic count since its blocks) by this much
WARN_EVERY_S = 60.0


def _skew() -> int:
    raw = os.environ.get("MEDCHAIN_CLOCK_SKEW_MS") or "0"
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"MEDCHAIN_CLOCK_SKEW_MS={raw!r}: an integer number of ms") from None


SKEW_MS = _skew()


def now_ms() -> int:
    """This validator's wall clock in ms (skewed by MEDCHAIN_CLOCK_SKEW_MS, for fault-injection tests)."""
    return int(time.time() * 1000) + SKEW_MS


def timer_ms() -> int:
    """Monotonic ms: what the replica's timers (the view timer, retransmissions, the censorship
    watch's grace) count intervals with. A wall-clock step (NTP, an operator) must not stop a view
    timer for as long as the step, nor make every transaction look late to the watch."""
    return int(time.monotonic() * 1000)


def _s(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


class ChainClock:
    def __init__(self, anchor_ms: int) -> None:
        """`anchor_ms`: the head block's time, or the genesis time before the first block."""
        if SKEW_MS:
            log.critical("CLOCK SKEW INJECTED: this validator's clock is %+.1f s off (MEDCHAIN_CLOCK_SKEW_MS; "
                         "fault-injection tests only)", SKEW_MS / 1000)
        self.offset = anchor_ms - timer_ms()  # lenient until a block commits: the head may be old
        self.refused = {"future": 0, "lagging": 0}
        self._refused: OrderedDict[bytes, None] = OrderedDict()  # hashes of blocks refused (and logged)
        self._warned = 0.0

    def committed(self, time_ms: int) -> None:
        self.offset = max(self.offset, time_ms - timer_ms())

    def chain_ms(self) -> int:
        """The chain's time now, as our monotonic clock counts it from the blocks we committed."""
        return self.offset + timer_ms()

    def refuses(self, block: Block, now: int) -> bool:
        """True if the fresh proposal `block` is refused for its time (asked again on each retransmission:
        a block a little ahead may be fine a second later); each block's first refusal is counted and logged."""
        h = block.header
        why = self.refusal(h.time_ms, now, h.proposer)
        if why is None:
            return False
        if block.hash not in self._refused:
            self._refused[block.hash] = None
            while len(self._refused) > 1024:
                self._refused.popitem(last=False)
            self.refused["future" if "ahead" in why else "lagging"] += 1
            log.warning("refused block %d from validator %d (view %d): %s", h.height, h.proposer, h.view, why)
        return True

    def refusal(self, time_ms: int, now: int, proposer: int) -> str | None:
        """Why a fresh proposal by `proposer` stamped `time_ms` is refused (`now`: our wall clock), or None."""
        ahead = time_ms - now
        if ahead > MAX_FUTURE_MS:
            behind_chain = self.chain_ms() - now  # ours, against the chain's pace since its last blocks
            fast = ahead - max(behind_chain, 0)  # the proposer's, against the chain's
            blame = [f"this validator's clock is {_s(behind_chain)} behind the chain's: fix this machine's clock"
                     ] if behind_chain > MAX_FUTURE_MS else []
            blame += [f"validator {proposer}'s clock is fast"] if fast > MAX_FUTURE_MS else []
            return (f"its time is {_s(ahead)} ahead of this validator's clock (at most {_s(MAX_FUTURE_MS)}); "
                    f"{'; '.join(blame) or 'the clocks disagree'}")
        lag = self.chain_ms() - time_ms
        if lag > MAX_LAG_MS:
            return (f"its time is {_s(lag)} behind the chain's time as this validator counts it since the last "
                    f"blocks (at most {_s(MAX_LAG_MS)}): validator {proposer}'s clock is slow or stuck")
        self.check_own(time_ms, now)
        return None

    def check_own(self, time_ms: int, now: int) -> None:
        """A block we accept (or build) far from our own wall clock: say that our clock looks wrong."""
        off = now - time_ms
        if abs(off) > MAX_FUTURE_MS and time.monotonic() - self._warned > WARN_EVERY_S:
            self._warned = time.monotonic()
            log.warning("this validator's clock is %s %s the chain's (block time vs our clock): blocks it "
                        "proposes will be refused while that lasts; fix this machine's clock (NTP)",
                        _s(abs(off)), "ahead of" if off > 0 else "behind")
