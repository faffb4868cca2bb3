"""Fault injection for tests of real validator processes. Never on by default.

- MEDCHAIN_FAULTS=1: the validator polls `HOME/faults.json` ({"cut": [validator indices]}) and drops
  every consensus, forwarding and state-transfer message to and from those validators: a partition at
  the p2p layer that the harness (devices/faultharness.py) sets and heals without restarting anything.
- MEDCHAIN_CLOCK_SKEW_MS=<ms>: the validator's clock runs that far ahead (or behind, negative); read
  in node/clock.py, the one place a validator reads wall time.
- MEDCHAIN_BYZANTINE=<mode>: byzantine behaviour (the node logs it loudly at start):

- ``equivocate``: as primary, send every fresh proposal to the first half of the other validators and a
  conflicting block (the same transactions, time + 1 ms, so it is valid too) to the others. Honest
  replicas must commit at most one of them per sequence number, prove the equivocation from the
  pre-prepare signatures carried in the prepares, and move to a new view.
- ``withhold``: admit clients' writes but keep none of their ciphertexts: forward them without
  sidecars and commit nothing to the block store. As primary it proposes writes whose blobs no
  other validator holds; honest backups must not vote for them (node/availability.py), so no
  certificate names a blob that nobody holds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from node.consensus import PrePrepare
from node.execution import build_block

if TYPE_CHECKING:
    from node.validator import Validator

log = logging.getLogger("medchain.faults")
MODES = ("equivocate", "withhold")


class FaultFile:
    """The partition a harness asks for, re-read when the file changes (only with MEDCHAIN_FAULTS=1)."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "faults.json"
        self.enabled = os.environ.get("MEDCHAIN_FAULTS") == "1"
        self.cut: frozenset[int] = frozenset()
        self._mtime = None
        if self.enabled:
            log.critical("fault injection enabled: obeying %s", self.path)
            self.poll()

    def poll(self) -> None:
        if not self.enabled:
            return
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            cut = json.loads(self.path.read_text())["cut"] if mtime is not None else []
            self.cut = frozenset(int(i) for i in cut)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", self.path, exc)
            return
        log.warning("fault injection: cut off from validators %s", sorted(self.cut) or "none")


def write_cut(home: Path, cut: list[int]) -> None:
    """For the harness: cut the validator at `home` off from `cut` (atomically replaced file)."""
    tmp = Path(home) / "faults.json.tmp"
    tmp.write_text(json.dumps({"cut": sorted(cut)}))
    os.replace(tmp, Path(home) / "faults.json")


def mode() -> str | None:
    m = os.environ.get("MEDCHAIN_BYZANTINE") or None
    if m is not None and m not in MODES:
        raise SystemExit(f"MEDCHAIN_BYZANTINE={m!r}: known modes are {', '.join(MODES)}")
    return m


def equivocate(v: Validator, pp: PrePrepare) -> bool:
    """Send `pp` to half the replicas and a conflicting pre-prepare to the rest; False if not possible."""
    b = pp.block
    if b is None or b.header.view != pp.view:
        return False
    tip = v._tip_for(b.header.prev_hash)
    ex = v._executed.get(b.hash)
    if tip is None or ex is None:
        return False
    alt = build_block(tip, ex.txs, v.chain_id, pp.view, v.index, b.header.time_ms + 1)
    v._executed[alt.block.hash] = alt
    r = v.replica
    pp2 = r._make(PrePrepare, pp.seq, alt.block.hash, block=alt.block)
    others = [j for j in range(v.n) if j != v.index]
    half = len(others) // 2 or 1
    for j in others[:half]:
        v._send(j, pp.encode())
    for j in others[half:]:
        v._send(j, pp2.encode())
    log.warning("byzantine: equivocated at sequence %d (%s to %s, %s to %s)", pp.seq, b.hash.hex()[:8],
                others[:half], alt.block.hash.hex()[:8], others[half:])
    return True


def withhold_sidecars(v: Validator) -> None:
    """The ``withhold`` mode: sidecars are dropped as they enter the pool and the forward buffer."""
    admit, take = v.mempool.admit, v.admission.take_forward

    def admit_without(tx, committed_nonce, now, forwarded=False, origin="", sidecar=None):  # noqa: ANN001, ANN202
        return admit(tx, committed_nonce, now, forwarded, origin, None)

    v.mempool.admit = admit_without
    v.admission.take_forward = lambda: [(raw, None) for raw, _ in take()]
