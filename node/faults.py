"""Fault injection for tests of real validator processes. Never on by default.

- MEDCHAIN_FAULTS=1: the validator polls `HOME/faults.json` ({"cut": [validator indices]}) and drops
  every consensus, forwarding and state-transfer message to and from those validators: a partition at
  the p2p layer that the harness (devices/net/faultharness.py) sets and heals without restarting anything.
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
- ``missize``: admit a client's write without a sidecar whatever size it states for the blob held
  here (a patient colluding to record a false size), and forward and propose it. Honest backups
  hold the blob with its true size and must not vote for the write (node/availability.py).
- ``drop``: answer clients' submissions 202 and keep them, but never forward them to the other
  validators (nor re-forward, nor propose them): a validator censoring the clients that use it.
  The client, its transaction not committed in time, sends the same signed bytes to the other
  validators (devices/patient/phone.py wait_proven).
- ``censor``: as primary, leave out of its blocks every transaction of a sender with a grant, change
  or revoke waiting (a patient's revoke held back so a clinician keeps reading), and propose the rest
  as usual, so blocks keep coming. Honest backups hold the grant, watch it left out of blocks with
  room for it, stop counting the primary's blocks as progress and move to a new view
  (node/consensus/censor.py).
- ``fill``: as ``censor``, and every block it proposes is padded to the genesis's block_max_txs with
  profile updates of fresh keys (Sybil senders) that it never forwarded, so its blocks are full by
  count and carry work even when nothing else waits. Honest backups hold none of the fillers: most of
  each full block is of senders placed after the grant, which an honest primary's round-robin would
  have reached first, and they move to a new view all the same (node/consensus/censor.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from node.admission import Admission
from node.consensus import PrePrepare
from node.crypto.keys import Identity
from node.execution import Executed, Tip, build_block
from node.mempool import Mempool
from node.tx import Profile, Tx

log = logging.getLogger("medchain.faults")
MODES = ("equivocate", "withhold", "missize", "censor", "drop", "fill")


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


def equivocate(pp: PrePrepare, tip: Tip | None, ex: Executed | None, chain_id: str, n: int, index: int,
               sign: Callable[[bytes], bytes]) -> tuple[Executed, list[tuple[int, bytes]]] | None:
    """The ``equivocate`` mode: `pp` for half the replicas and a conflicting pre-prepare, signed
    with `sign`, for the rest. Returns the conflicting block executed and the (validator, message)
    sends, or None if `pp` cannot be equivocated (a re-proposal, or its parent is not executed)."""
    b = pp.block
    if b is None or b.header.view != pp.view or tip is None or ex is None:
        return None
    alt = build_block(tip, ex.txs, chain_id, pp.view, index, b.header.time_ms + 1)
    unsigned = PrePrepare(pp.view, pp.seq, alt.block.hash, index, bytes(64), block=alt.block)
    pp2 = PrePrepare(pp.view, pp.seq, alt.block.hash, index, sign(unsigned.signing_digest(chain_id)),
                     block=alt.block)
    others = [j for j in range(n) if j != index]
    half = len(others) // 2 or 1
    sends = [(j, pp.encode()) for j in others[:half]] + [(j, pp2.encode()) for j in others[half:]]
    log.warning("byzantine: equivocated at sequence %d (%s to %s, %s to %s)", pp.seq, b.hash.hex()[:8],
                others[:half], alt.block.hash.hex()[:8], others[half:])
    return alt, sends


def withhold_sidecars(mempool: Mempool, admission: Admission) -> None:
    """The ``withhold`` mode: sidecars are dropped as they enter the pool and the forward buffer."""
    admit, take = mempool.admit, admission.take_forward

    def admit_without(tx, committed_nonce, now, forwarded=False, origin="", sidecar=None, limit=None):  # noqa: ANN001, ANN202
        return admit(tx, committed_nonce, now, forwarded, origin, None, limit)

    mempool.admit = admit_without  # type: ignore[method-assign]
    admission.take_forward = lambda: [(raw, None) for raw, _ in take()]  # type: ignore[method-assign]


def admit_any_size(admission: Admission) -> None:
    """The ``missize`` mode: a write naming a blob held here is admitted whatever size it states."""
    admission.check_held_size = False


def sybil_fill(txs: list[Tx], max_txs: int, chain_id: str) -> list[Tx]:
    """``fill``: the proposal padded to `max_txs` with a profile update of a fresh key each, signed
    here and sent to no one before the block."""
    return txs + [Tx.build(Identity.generate(), chain_id, 1, Profile("filler", "r", "o", bytes(32)))
                  for _ in range(max_txs - len(txs))]
