"""The genesis's rules for the state machine: who may issue clinician credentials, and the
break-glass limits. Fixed for a chain's life (part of the genesis hash), passed to execution by
the caller, so the state machine stays a pure function of (state, block, rules)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    # compressed secp256k1 keys of the organisations whose credentials make a clinician: only a
    # profile carrying one may break the glass (none listed: nobody may)
    issuers: frozenset[bytes] = frozenset()
    # emergency reads per window (node.state.machine.BREAK_GLASS_WINDOW_MS), each counted apart:
    # per staff member, per credential issuer (fresh keys with fresh credentials of one
    # organisation share its budget) and per patient (however many organisations read them)
    per_staff: int = 3
    per_issuer: int = 30
    per_patient: int = 6


NO_ISSUERS = Rules()
