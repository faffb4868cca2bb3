"""What every route module shares: the app's keys (the validator, the body limits), JSON refusals,
parameter parsing, signed-request checks and proof bundles. Every refusal is a 4xx with a JSON
{"error": reason}; HTTP statuses live in node/api only."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
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
    deterministic (RFC 6979), so the same request always carries the same signature. Bounded:
    beyond `cap` entries the oldest go (refilling it takes that many authorised requests)."""

    def __init__(self, keep_s: float, cap: int = 200_000) -> None:
        self.keep_s, self.cap = keep_s, cap
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first_use(self, sig: bytes, now: float) -> bool:
        while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) >= self.cap):
            self._seen.popitem(last=False)
        if sig in self._seen:
            return False
        self._seen[sig] = now + self.keep_s
        return True


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


def with_proof(req: web.Request, out: dict, read: list[bytes]) -> web.Response:
    """`out` as JSON; with ?proof=1, plus the proof bundle for the state keys the route `read`."""
    if proofs.wants_proof(req):
        if len(read) > proofs.MAX_KEYS:
            out["proof"], out["proof_error"] = None, (f"{len(read)} keys: fetch them from POST /v1/proofs "
                                                      f"in requests of at most {proofs.MAX_KEYS}")
        else:
            b = proofs.bundle(validator(req), read) if read else None
            out["proof"] = None if b is None else b.hex()
        out["proof_keys"] = [k.hex() for k in read]  # what the bundle proves, in its order
    return web.json_response(out)


def signed_by(req: web.Request, v: Validator, what: str, digest: Callable[[int], bytes], extra: str = "",
              well_formed: bool = True, once: bool = False) -> bytes | web.Response:
    """The signer's public key once X-Medchain-Pubkey, -Time and -Signature check out against
    `digest(time_ms)` (docs/PROTOCOL.md 6.1 and 7), else the 401 to answer. With `once`, a
    request already served (the same signature) is refused too."""
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
    if once and not req.app[SEEN].first_use(sig, time.monotonic()):
        return err(401, f"this signed {what} was used already: sign a new one")
    return pub
