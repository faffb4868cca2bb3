"""What every route module shares: the app's keys (the validator, the body limits), JSON refusals,
parameter parsing, signed-request checks and proof bundles. Every refusal is a 4xx with a JSON
{"error": reason}; HTTP statuses live in node/api only."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from aiohttp import web

from node import clock
from node.api import proofs
from node.api.limits import Limits
from node.api.limits import retry_after as retry_after
from node.crypto import ecdsa
from node.validator import Validator

log = logging.getLogger("medchain.api")
MSGPACK = "application/msgpack"


class SeenRequests:
    """Signatures of signed requests already served, kept for twice the allowed clock skew (after
    that the time check refuses them anyway): a captured request is served once. ECDSA here is
    deterministic (RFC 6979), so the same request always carries the same signature. Bounded: with
    `cap` unexpired entries a new request cannot be told from a replay and waits (never is an entry
    dropped early: flooding the record to evict a captured request would let it be replayed). Only
    authorised requests are recorded (the caller asks once it has checked the request).

    Full, or with the signer at its share, a request is still served if it is signed later than any
    the signer had served that way (given its time, `t_ms`): the signer's latest such time is kept
    instead of the signature, and anything of that signer's at or before it is refused as a possible
    replay. A few Sybil keys filling the record (20,000 entries each) used to lock every signed
    download and upload out; now honest clients go on, one request after another.
    """

    def __init__(self, keep_s: float, cap: int = 200_000, per_signer: int = 20_000, marks: int = 100_000) -> None:
        self.keep_s, self.cap, self.per_signer, self.max_marks = keep_s, cap, per_signer, marks
        # signer -> (latest time served past the record, when that mark may go): a replay of such a
        # request is refused by this mark while it lasts, and by the time check after it
        self._marks: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._seen: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()  # sig -> (expiry, signer)
        # each signer's entries' expiries, oldest first: one signer cannot fill the record alone, and
        # its refusal's Retry-After is read in O(1) (a walk of the record cost ~12 ms a refusal at its
        # cap, on the event loop that also runs consensus)
        self._by: dict[bytes, deque[float]] = {}

    def first_use(self, sig: bytes, now: float, signer: bytes = b"", t_ms: int | None = None) -> str:
        """"ok" the first time, "replay", "stale" (signed no later than one this signer had served
        past the record), or, with no `t_ms` or no room for the signer's mark, "full" while the
        record is full (retry later) or "quota" while this signer holds its share of it."""
        while self._seen and next(iter(self._seen.values()))[0] < now:
            _, (_, who) = self._seen.popitem(last=False)
            mine = self._by[who]
            mine.popleft()  # entries expire in the order they came, per signer too
            if not mine:
                del self._by[who]
        while self._marks and next(iter(self._marks.values()))[1] < now:
            self._marks.popitem(last=False)
        if sig in self._seen:
            return "replay"
        mark = self._marks.get(signer)
        if mark is not None and t_ms is not None and t_ms <= mark[0]:
            return "stale"
        mine = self._by.get(signer)
        over = "quota" if mine is not None and len(mine) >= self.per_signer else \
            "full" if len(self._seen) >= self.cap else None
        if over is not None:
            if t_ms is None or (mark is None and len(self._marks) >= self.max_marks):
                return over
            self._marks[signer] = (t_ms, now + self.keep_s)
            self._marks.move_to_end(signer)  # expiries stay in order
            return "ok"
        self._seen[sig] = (now + self.keep_s, signer)
        self._by.setdefault(signer, deque()).append(now + self.keep_s)
        return "ok"

    def retry_s(self, now: float, signer: bytes | None = None) -> int:
        """Seconds until the oldest entry (of `signer`, if given) expires: a refusal's Retry-After."""
        if signer is None:
            oldest = next(iter(self._seen.values()), (None, b""))[0]
        else:
            mine = self._by.get(signer)
            oldest = mine[0] if mine else None
        return 1 if oldest is None else max(1, int(oldest - now) + 1)


VALIDATOR = web.AppKey("validator", Validator)
LIMITS = web.AppKey("limits", Limits)
SEEN = web.AppKey("seen_requests", SeenRequests)


def validator(req: web.Request) -> Validator:
    return req.app[VALIDATOR]


def err(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


async def read_body(req: web.Request, limit: int, what: str) -> bytes:
    """The request body within `limit` and the client's and server's in-flight budgets (limits.py)."""
    return await req.app[LIMITS].read_body(req, limit, what)


def hex_param(s: str, n: int, what: str) -> bytes:
    try:
        b = bytes.fromhex(s)
    except ValueError:
        b = b""
    if len(b) != n:
        raise web.HTTPBadRequest(text=f'{{"error": "{what} must be {n} bytes of hex"}}', content_type="application/json")
    return b


def int_query(req: web.Request, name: str, default: int) -> int:
    try:
        return int(req.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f'{{"error": "{name} must be an integer"}}',
                                 content_type="application/json") from None


def too_many_keys(n: int) -> str:
    return f"{n} keys: fetch them from POST /v1/proofs in requests of at most {proofs.MAX_KEYS}"


def with_proof(req: web.Request, out: dict, read: list[bytes] | int) -> web.Response:
    """`out` as JSON; with ?proof=1, plus the proof bundle for the state keys the route `read` (or,
    an int: how many it would read, over MAX_KEYS, without reading them)."""
    if proofs.wants_proof(req):
        if isinstance(read, int) or len(read) > proofs.MAX_KEYS:
            out["proof"], out["proof_error"] = None, too_many_keys(read if isinstance(read, int) else len(read))
            out["proof_keys"] = None  # as many as that are not listed either
            return web.json_response(out)
        else:
            b = proofs.bundle(validator(req), read) if read else None
            out["proof"] = None if b is None else b.hex()
        out["proof_keys"] = [k.hex() for k in read]  # what the bundle proves, in its order
    return web.json_response(out)


def signed_by(req: web.Request, v: Validator, what: str, digest: Callable[[int], bytes], extra: str = "",
              well_formed: bool = True) -> bytes | web.Response:
    """The signer's public key once X-Medchain-Pubkey, -Time and -Signature check out against
    `digest(time_ms)` (docs/PROTOCOL.md 6.1 and 7), else the 401 to answer. A request served only
    once is then checked with `first_use`, after it is authorised."""
    h = req.headers
    try:
        pub = bytes.fromhex(h["X-Medchain-Pubkey"])
        t_ms = int(h["X-Medchain-Time"])
        sig = bytes.fromhex(h["X-Medchain-Signature"])
    except (KeyError, ValueError):
        well_formed = False
    if not well_formed:
        return err(401, f"a signed {what} is required: X-Medchain-Pubkey, X-Medchain-Time, X-Medchain-Signature{extra}")
    # integer ms: a huge X-Medchain-Time must not overflow a float (a 500 found by fuzzing)
    off = clock.now_ms() - t_ms
    if abs(off) > v.params.request_skew_ms:
        by = f"{abs(off) // 1000} s" if abs(off) < 10**15 else "more than 10^12 s"  # ints: no float overflow
        why = (f"request time is too far from this validator's clock: {by} {'behind' if off > 0 else 'ahead of'} "
               f"it (at most {v.params.request_skew_ms // 1000} s); check this client's clock, or ask another validator")
        log.info("refused a signed %s: %s", what, why)
        return err(401, why)
    if not ecdsa.verify(pub, digest(t_ms), sig):
        return err(401, f"bad {what} signature")
    return pub


def first_use(req: web.Request, what: str) -> web.Response | None:
    """None the first time an (authorised) signed request is served; else the answer: 401 for a
    replay, 503 while the record of served requests is full. No await since the caller's checks:
    two copies of one request cannot both pass."""
    seen, now = req.app[SEEN], time.monotonic()
    signer = bytes.fromhex(req.headers["X-Medchain-Pubkey"])
    first = seen.first_use(bytes.fromhex(req.headers["X-Medchain-Signature"]), now, signer,
                           int(req.headers["X-Medchain-Time"]))  # checked by signed_by
    if first == "full":
        return err(503, f"too many signed {what}s served lately to tell this one from a replay: retry later",
                   {"Retry-After": str(seen.retry_s(now))})
    if first == "quota":
        return err(429, f"too many signed {what}s of this key served lately: retry later",
                   {"Retry-After": str(seen.retry_s(now, signer))})
    if first == "replay":
        return err(401, f"this signed {what} was used already: sign a new one")
    if first == "stale":
        return err(401, f"this signed {what} is no newer than one of this key served while the record of "
                        f"served requests was full, so it could be a replay: sign a new one")
    return None
