"""A patient's and an account's state, each with an optional proof bundle (`?proof=1`): the
account, the audit log, the grants, the sealed keys and the data index."""

from __future__ import annotations

from aiohttp import web

from node.api import proofs
from node.api.common import (
    err,
    hex_param,
    int_query,
    validator,
    with_proof,
)
from node.api.shapes import audit_entry, data_entry, grant_entry, profile_entry, sealed_entry
from node.state import keys
from node.state.machine import Overlay, break_glass_enabled
from node.state.records import AuditRec, BlobRec, GrantRec, ProfileRec, Receipt
from node.tx import DATA_TYPES
from node.wire import decode

routes = web.RouteTableDef()


@routes.get("/v1/accounts/{addr}")
async def account(req: web.Request) -> web.Response:
    v = validator(req)
    addr = hex_param(req.match_info["addr"], 32, "address")
    committed = v.committed_nonce(addr)
    prof = v.ledger.get_state(keys.profile(addr))
    epochs = {}
    for name, tid in DATA_TYPES.items():
        e = v.ledger.get_state(keys.epoch(addr, tid))
        epochs[name] = 0 if e is None else decode(e)
    out = {"address": addr.hex(), "nonce": committed, "next_nonce": v.mempool.next_nonce(addr, committed),
           "epochs": epochs, "profile": None,
           "break_glass": break_glass_enabled(Overlay(v.ledger.get_state), addr)}
    if prof is not None:
        out["profile"] = profile_entry(ProfileRec.decode(prof))
    return with_proof(req, out, [keys.profile(addr), keys.nonce(addr), keys.policy(addr),
                                  *(keys.epoch(addr, t) for t in DATA_TYPES.values())])


# entries per page of GET /v1/patients/{p}/audit and /data: each page is read on the event loop
# that also runs consensus, so a page costs what a thousand state reads do (a page of 10,000 held
# the loop ~0.3-0.5 s: a few such requests a second forced view changes)
AUDIT_PAGE = 1000
AUDIT_PAGE_MAX = 1000
PAGE_MAX = 1000  # /data, /grants and /keys: one patient may hold tens of thousands of each


def _page(req: web.Request, prefix: bytes) -> tuple[list[tuple[bytes, bytes]], str | None] | web.Response:
    """One page of the state pairs under `prefix`, in key order, from the cursor `?after=` (the
    `next` of the previous page; `?limit=` at most PAGE_MAX), and the cursor of the page after it
    (None on the last); a 400 if the cursor is not hex of a key under `prefix`."""
    limit = min(max(int_query(req, "limit", PAGE_MAX), 1), PAGE_MAX)
    try:
        start = bytes.fromhex(req.query.get("after", ""))
    except ValueError:
        return err(400, "after must be the hex cursor `next` of the previous page")
    if start and not start.startswith(prefix):
        return err(400, "after is not a cursor of this patient's list")
    page = validator(req).ledger.scan_state(prefix, limit + 1, after=start)  # one more: is there a next page?
    return (page[:limit], page[limit - 1][0].hex()) if len(page) > limit else (page, None)


@routes.get("/v1/patients/{addr}/audit")
async def audit(req: web.Request) -> web.Response:
    """The audit log, newest first, a page at a time (`?before=` the cursor `next` of the previous
    page); every break-glass read, whatever the page, under "break_glass" (its own index)."""
    v = validator(req)
    addr = hex_param(req.match_info["addr"], 32, "address")
    get = v.ledger.get_state
    count = decode(get(keys.audit_count(addr)) or b"\x00")
    before = min(max(int_query(req, "before", count), 0), count)
    limit = min(max(int_query(req, "limit", AUDIT_PAGE), 1), AUDIT_PAGE_MAX)
    read = [keys.audit_count(addr), keys.emergency_count(addr)]

    def entry(seq: int) -> dict:
        rec = AuditRec.decode(get(keys.audit(addr, seq)))
        read.extend((keys.audit(addr, seq), keys.receipt(rec.tx)))
        return audit_entry(rec, Receipt.decode(get(keys.receipt(rec.tx))).height, seq)

    reads = [entry(seq) for seq in range(before - 1, max(before - limit, 0) - 1, -1)]
    emergency = []
    for i in range(decode(get(keys.emergency_count(addr)) or b"\x00") - 1, -1, -1):
        read.append(keys.emergency_entry(addr, i))
        emergency.append(entry(decode(get(keys.emergency_entry(addr, i)))))
    nxt = before - limit if before - limit > 0 else None
    return with_proof(req, {"patient": addr.hex(), "count": count, "next": nxt, "break_glass": emergency,
                            "reads": reads}, read)


@routes.get("/v1/patients/{addr}/grants")
async def grants(req: web.Request) -> web.Response:
    """The patient's grants, a page at a time (`?after=` the cursor `next`), in staff-key order."""
    v = validator(req)
    addr = hex_param(req.match_info["addr"], 32, "address")
    paged = _page(req, keys.grants_prefix(addr))
    if isinstance(paged, web.Response):
        return paged
    page, nxt = paged
    out = [grant_entry(keys.grant_staff(k), GrantRec.decode(raw)) for k, raw in page]
    read: list[bytes] | int = []
    if proofs.wants_proof(req):  # the whole committed list, as for /data: not provable by pages
        n = decode(v.ledger.get_state(keys.grant_count(addr)) or b"\x00")
        if 1 + n + len(out) > proofs.MAX_KEYS:
            read = 1 + n + len(out)  # nothing more is read
        else:
            read = [keys.grant_count(addr), *(keys.grant_entry(addr, i) for i in range(n)),
                    *(keys.grant(addr, bytes.fromhex(g["staff"])) for g in out)]
    return with_proof(req, {"patient": addr.hex(), "grants": out, "next": nxt}, read)


@routes.get("/v1/patients/{addr}/keys/{staff}")
async def sealed_keys(req: web.Request) -> web.Response:
    """The data keys sealed to `staff`, a page at a time (`?after=` the cursor `next`)."""
    addr = hex_param(req.match_info["addr"], 32, "address")
    staff = hex_param(req.match_info["staff"], 32, "staff address")
    paged = _page(req, keys.sealed_keys_prefix(addr, staff))
    if isinstance(paged, web.Response):
        return paged
    found, nxt = paged
    out = [sealed_entry(k, raw) for k, raw in found]
    return with_proof(req, {"keys": out, "next": nxt}, [k for k, _ in found])


@routes.get("/v1/patients/{addr}/data")
async def data(req: web.Request) -> web.Response:
    v = validator(req)
    addr = hex_param(req.match_info["addr"], 32, "address")
    dtype = None
    if "type" in req.query:
        if req.query["type"] not in DATA_TYPES:
            return err(400, f"unknown data type {req.query['type']!r}")
        dtype = DATA_TYPES[req.query["type"]]
    t_from, t_to = int_query(req, "from", 0), int_query(req, "to", 2**63 - 1)
    paged = _page(req, keys.data_index_prefix(addr, dtype))
    if isinstance(paged, web.Response):
        return paged
    page, nxt = paged
    out = []
    for k, _ in page:
        cidb = keys.data_index_cid(k)
        rec = BlobRec.decode(v.ledger.get_state(keys.blob(cidb)))
        if rec.t_end_ms < t_from or rec.t_start_ms > t_to:
            continue
        out.append(data_entry(cidb, rec))
    read: list[bytes] | int = []
    if proofs.wants_proof(req):  # the whole committed list: a client filters what it proved itself
        n = decode(v.ledger.get_state(keys.data_count(addr)) or b"\x00")
        if 2 * n + 1 > proofs.MAX_KEYS:
            read = 2 * n + 1  # not provable in one answer: nothing more is read
        else:
            ents = [keys.data_entry(addr, i) for i in range(n)]
            read = [keys.data_count(addr), *ents, *(keys.blob(v.ledger.get_state(e)) for e in ents)]
    return with_proof(req, {"patient": addr.hex(), "data": out, "next": nxt}, read)
