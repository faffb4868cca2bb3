"""State reads that trust no single validator (the light-client rule, docs/PROTOCOL.md "Proofs in
the API"): every value a phone or staff client acts on comes from `POST /v1/proofs` with a proof
against the state root of a block whose commit certificate carries 2f+1 valid signatures of the
genesis validators. A validator whose answer does not check is named and the next one is asked.

Also refused: a header older than one the client has already seen or committed in, or than the
(f+1)-th highest head height that distinct validators report, signed, when the reader starts
(a stale header), and
any answer a caller's own record contradicts (`check`). Lists are committed as a
count plus indexed entries, so every entry below the proven count is fetched with its proof.

The read methods return the same JSON shapes as the validator's routes (node/api/shapes.py), so
`Phone` and `Staff` use this object in place of a `NodeClient` for reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from devices.patient.client import ApiError, json_answer, read_capped
from node.api.shapes import audit_entry, data_entry, grant_entry, profile_entry, sealed_entry
from node.block import max_faulty, quorum
from node.crypto import ecdsa
from node.crypto.keys import address_of
from node.proof import MAX_BUNDLE, Values, check_bundle
from node.state import keys
from node.state.records import AuditRec, BlobRec, GrantRec, PolicyRec, ProfileRec, Receipt
from node.tx import data_type_name
from node.tx.model import DATA_TYPES
from node.tx.requests import NONCE_BYTES, head_digest
from node.wire import decode, encode

log = logging.getLogger("medchain.verified")
CHUNK = 1024  # keys per proof request
ASK_SILENCE_S = 10.0  # a proof request with no byte of answer for this long goes to the next validator


class LyingValidator(Exception):
    """A validator's answer failed verification; `url` names it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"validator {url} lied or is stale: {reason}")
        self.url, self.reason = url, reason


class NoHonestAnswer(Exception):
    def __init__(self, failures: list[str]) -> None:
        super().__init__("no validator gave a verifiable answer: " + "; ".join(failures))
        self.failures = failures


class NoBlockYet(ConnectionError):
    """A validator answered that its chain holds no block yet (HTTP 404 from /v1/proofs)."""


class VerifiedReader:
    def __init__(self, urls: Sequence[str], chain_id: str, validators: Sequence[bytes],
                 session: aiohttp.ClientSession | None = None, min_height: int = 0, wait_s: float = 10.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.chain_id, self.validators = chain_id, list(validators)
        self.session, self._own = session, session is None
        self.min_height = min_height  # the newest block seen or committed in: older headers are stale
        self.wait_s = wait_s  # how long to wait for validators that are merely behind
        self.refused: list[LyingValidator] = []  # every refused answer, for the caller to report
        self._demoted: set[str] = set()  # failed or lied last time: asked after the others
        self._fresh = False  # min_height raised to a height f+1 validators report (once)

    async def close(self) -> None:
        if self._own and self.session is not None:
            await self.session.close()
            self.session = None

    def refresh(self) -> None:
        """Before an act that a stale state would mislead (sealing data keys to a staff member's
        X25519 key): the next read checks again how far f+1 validators have got. A long-lived
        reader otherwise trusted any certified state at or above the last height it saw, and a
        validator serving an old one (stale, or replaying) could hand it a key the staff member
        has since replaced."""
        self._fresh = False

    def saw_height(self, height: int) -> None:
        self.min_height = max(self.min_height, height)

    async def _ask(self, url: str, state_keys: list[bytes]) -> bytes:
        # silence for ASK_SILENCE_S ends the ask: a validator that accepts and never answers costs
        # that, not the session's whole timeout, before the next one is asked
        async with self.session.post(url + "/v1/proofs", data=encode(state_keys),
                                     headers={"Content-Type": "application/msgpack"},
                                     timeout=aiohttp.ClientTimeout(total=60, sock_connect=5,
                                                                   sock_read=ASK_SILENCE_S)) as resp:
            if resp.status == 404:  # the validator's chain is at its genesis: nothing to prove against
                raise NoBlockYet(f"{url}: no block is committed yet")
            if resp.status != 200:
                raise ConnectionError(f"HTTP {resp.status}")
            try:
                return await read_capped(resp, MAX_BUNDLE, "a proof bundle")
            except ApiError as exc:  # an endless body: cut, not buffered to the end
                raise ConnectionError(exc.reason) from None

    async def _freshness(self) -> None:
        """Before the first read: raise min_height to the (f+1)-th highest head height that distinct
        genesis validators report, each signing it over this reader's fresh nonce (`GET /v1/head`):
        a height at least one honest validator has reached, so a validator cannot serve an old
        (validly certified) state to a client that has seen nothing newer. f liars cannot raise it
        past every honest validator, and one validator reached at several addresses counts once
        (counting addresses let a liar at two of them pass for f+1). With fewer than f+1
        validators' reports nothing tells a fresh state from an old one: NoHonestAnswer, and the
        next read asks again."""
        f = max_faulty(len(self.validators))
        heights = await self._heads()
        if len(heights) <= f:
            raise NoHonestAnswer([f"{len(heights)} distinct validators of those asked ({', '.join(self.urls)}) "
                                  f"reported a signed head height; {f + 1} must, so that an old state cannot "
                                  "pass for the current one"])
        self.saw_height(sorted(heights.values(), reverse=True)[f])
        self._fresh = True

    async def _heads(self) -> dict[bytes, int]:
        """The head height each genesis validator reached signs over a fresh nonce (`GET /v1/head`),
        by validator (one reached at several addresses counts once, with its highest)."""
        genesis = set(self.validators)

        async def report(url: str) -> tuple[bytes, int] | None:
            nonce = os.urandom(NONCE_BYTES)
            try:
                async with self.session.get(url + "/v1/head", params={"nonce": nonce.hex()},
                                            timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status != 200:
                        return None
                    a = await json_answer(r)
                who, height, sig = bytes.fromhex(a["validator"]), a["height"], bytes.fromhex(a["signature"])
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError, ApiError):
                return None
            if (who not in genesis or type(height) is not int or not 0 <= height < 2**64  # msgpack's range
                    or not ecdsa.verify(who, head_digest(self.chain_id, who, nonce, height), sig)):
                log.warning("validator %s sent a head height that does not verify", url)
                return None
            return who, height
        heights: dict[bytes, int] = {}
        for got in await asyncio.gather(*(report(u) for u in self.urls)):
            if got is not None:
                heights[got[0]] = max(heights.get(got[0], 0), got[1])
        return heights

    async def _at_genesis(self) -> bool:
        """Whether the chain is at its genesis now: a quorum (2f+1) of genesis validators sign a head of
        0 over a fresh nonce and none signs a higher one. f+1 would not do: an honest validator
        that was wiped and is catching up reports 0 too, and with f liars it would make f+1. (A
        validator's unsigned "no block yet" alone is one validator's word.)"""
        heights = await self._heads()
        return len(heights) >= quorum(len(self.validators)) and max(heights.values()) == 0

    async def fetch(self, state_keys: list[bytes], check: Callable[[Values], None] | None = None) -> Values:
        """The proven values of `state_keys` from the first validator whose answer verifies (and
        passes `check`, which raises ValueError on values the caller knows to be false)."""
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        if not self._fresh:
            await self._freshness()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            failures, stale, at_genesis = [], 0, 0
            for url in sorted(self.urls, key=lambda u: u in self._demoted):  # stable: the caller's order else
                try:
                    raw = await self._ask(url, state_keys)
                except NoBlockYet as exc:
                    failures.append(str(exc))
                    at_genesis += 1
                    continue
                except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError) as exc:
                    failures.append(f"{url}: unreachable ({exc})")
                    self._demoted.add(url)
                    continue
                try:
                    header, values = check_bundle(raw, state_keys, self.chain_id, self.validators, self.min_height)
                    if check is not None:
                        check(values)
                except ValueError as exc:
                    lie = LyingValidator(url, str(exc))
                    self.refused.append(lie)
                    failures.append(str(lie))
                    behind = str(exc).startswith("stale header")
                    stale += behind
                    # a proven header older than one seen: a validator a block or two behind, every
                    # moment under load (a lie about the head looks the same, and is waited out
                    # likewise); anything else failed its proof
                    log.log(logging.INFO if behind else logging.WARNING, "%s", lie)
                    if not behind:
                        self._demoted.add(url)
                    continue
                self._demoted.discard(url)
                self.saw_height(header.height)
                return values
            if at_genesis and self.min_height == 0 and await self._at_genesis():
                # the state at height 0 is the genesis state, which holds no key (node/state/machine.py):
                # nothing needs a validator's proof
                values: Values = dict.fromkeys(state_keys)
                try:
                    if check is not None:
                        check(values)
                    return values
                except ValueError as exc:  # the caller knows of a later state (its own record)
                    failures.append(f"the genesis state: {exc}")
            # only staleness (a validator behind, or lying about the head) is worth waiting out
            if stale == 0 or loop.time() >= deadline:
                raise NoHonestAnswer(failures)
            await asyncio.sleep(0.2)

    async def _list(self, count_key: bytes, entry: Callable[[int], bytes],
                    extra: Callable[[bytes], list[bytes]] = lambda _: []) -> list[tuple[bytes, Values]]:
        """Every entry of a committed list, each with the values of `extra(entry_value)` keys."""
        return await self._entries(_int((await self.fetch([count_key]))[count_key]), entry, extra)

    async def _entries(self, n: int, entry: Callable[[int], bytes],
                       extra: Callable[[bytes], list[bytes]] = lambda _: []) -> list[tuple[bytes, Values]]:
        """The first `n` entries of an append-only list (its count proven by the caller: an entry
        below it never changes, so it may be proven at a later state), with `extra`'s values."""
        ks = [entry(i) for i in range(n)]
        vals = await self._chunked(ks, _all_present)
        more = await self._chunked([k for e in ks for k in extra(vals[e])])
        return [(vals[e], more) for e in ks]

    async def _chunked(self, ks: list[bytes], check: Callable[[Values], None] | None = None) -> Values:
        """fetch() in requests of at most CHUNK keys (the API takes up to 1024); each chunk is proven on
        its own, against a header no older than the last one seen."""
        out: Values = {}
        for i in range(0, len(ks), CHUNK):
            out.update(await self.fetch(ks[i:i + CHUNK], check))
        return out

    # ---- the reads clients act on, in the API's JSON shapes ----------------------------------
    async def account(self, addr: bytes, min_epochs: dict[int, int] | None = None) -> dict:
        """The account with its proven profile and key epochs; `min_epochs` (the owner's own record)
        refuses an answer with any lower epoch."""
        ek = {t: keys.epoch(addr, t) for t in DATA_TYPES.values()}
        ks = [keys.profile(addr), keys.nonce(addr), keys.policy(addr), *ek.values()]

        def check(v: Values) -> None:
            for t, floor in (min_epochs or {}).items():
                if _int(v[ek[t]]) < floor:
                    raise ValueError(f"proves key epoch {_int(v[ek[t]])} for {data_type_name(t)}, below the "
                                     f"owner's own record {floor} (an old state)")
            prof = v[keys.profile(addr)]
            if prof is not None and address_of(ProfileRec.decode(prof).public_key) != addr:
                raise ValueError("the profile's signing key is not the account's")
        v = await self.fetch(ks, check)
        nonce = _int(v[keys.nonce(addr)])
        pol = v[keys.policy(addr)]
        out: dict[str, Any] = {"address": addr.hex(), "nonce": nonce, "next_nonce": nonce + 1,
                               "epochs": {data_type_name(t): _int(v[k]) for t, k in ek.items()}, "profile": None,
                               "break_glass": pol is None or bool(PolicyRec.decode(pol).break_glass)}
        if v[keys.profile(addr)] is not None:
            out["profile"] = profile_entry(ProfileRec.decode(v[keys.profile(addr)]))
        return out

    async def grants(self, patient: bytes) -> dict:
        rows = await self._list(keys.grant_count(patient), lambda i: keys.grant_entry(patient, i),
                                lambda staff: [keys.grant(patient, staff)])
        out = []
        for staff, more in rows:
            rec = more[keys.grant(patient, staff)]
            if rec is None:
                raise NoHonestAnswer([f"grantee {staff.hex()} is listed without a grant record"])
            out.append(grant_entry(staff, GrantRec.decode(rec)))
        return {"patient": patient.hex(), "grants": out}

    async def audit(self, patient: bytes) -> dict:
        # both counts from one state: proven apart, a break-glass read committing in between made
        # the emergency index longer than the log read before it, and honest validators "lied"
        counts = await self.fetch([keys.audit_count(patient), keys.emergency_count(patient)])
        rows = await self._entries(_int(counts[keys.audit_count(patient)]), lambda i: keys.audit(patient, i),
                                   lambda raw: [keys.receipt(AuditRec.decode(raw).tx)])
        entries = [(AuditRec.decode(raw), more) for raw, more in rows]
        reads = [audit_entry(e, Receipt.decode(more[keys.receipt(e.tx)]).height, seq)
                 for seq, (e, more) in enumerate(entries)][::-1]  # newest first, as the API pages them
        # the emergency index, proven on its own: it must name exactly the break-glass entries
        index = [_int(raw) for raw, _ in await self._entries(_int(counts[keys.emergency_count(patient)]),
                                                             lambda i: keys.emergency_entry(patient, i))]
        flagged = [seq for seq, (e, _) in enumerate(entries) if e.reason]
        if index != flagged:
            raise NoHonestAnswer([f"the emergency index {index} does not match the audit log's break-glass "
                                  f"entries {flagged}"])
        return {"patient": patient.hex(), "count": len(reads), "next": None,
                "break_glass": [r for r in reads if r["break_glass"]], "reads": reads}

    async def data(self, patient: bytes, type: str | None = None, **query: Any) -> dict:
        rows = await self._list(keys.data_count(patient), lambda i: keys.data_entry(patient, i),
                                lambda cid: [keys.blob(cid)])
        t_from, t_to = int(query.get("from", 0)), int(query.get("to", 2**63 - 1))
        recs = sorted(((cid, BlobRec.decode(more[keys.blob(cid)])) for cid, more in rows),
                      key=lambda r: (r[1].dtype, r[1].t_start_ms, r[0]))
        out = [data_entry(cid, rec) for cid, rec in recs
               if (type is None or data_type_name(rec.dtype) == type) and rec.t_end_ms >= t_from
               and rec.t_start_ms <= t_to]
        return {"patient": patient.hex(), "data": out}

    async def sealed_keys(self, patient: bytes, staff: bytes) -> dict:
        """The data keys sealed to `staff` for every type and epoch up to the proven current one."""
        ek = {t: keys.epoch(patient, t) for t in DATA_TYPES.values()}
        ep = await self.fetch(list(ek.values()))
        want = [keys.sealed_key(patient, staff, t, e) for t, k in ek.items() for e in range(_int(ep[k]) + 1)]
        v = await self._chunked(want)
        return {"keys": [sealed_entry(k, raw) for k in want if (raw := v[k]) is not None]}


def _int(raw: bytes | None) -> int:
    return 0 if raw is None else decode(raw)


def _all_present(v: Values) -> None:
    missing = [k for k, x in v.items() if x is None]
    if missing:
        raise ValueError(f"{len(missing)} entries below the list's proven count are absent")
