"""Submissions: `POST /v1/tx` (one transaction, or [transaction, sidecar]) and `POST /v1/txs`
(a batch), charged per transaction, admitted by node/admission.py."""

from __future__ import annotations

from aiohttp import web

from node.api.chain import tx_answer
from node.api.common import (
    LIMITS,
    err,
    int_query,
    read_body,
    retry_after,
    validator,
)
from node.mempool import AdmissionError, Refusal
from node.sidecar import SIDECAR_MAX, SidecarError, decode_submission, parse_item
from node.wire import MAX_TX_BYTES, WireError, decode

routes = web.RouteTableDef()
# what each kind of admission refusal is on the wire
HTTP_STATUS = {Refusal.INVALID: 400, Refusal.FORBIDDEN: 403, Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409,
               Refusal.TOO_LARGE: 413, Refusal.UNPROCESSABLE: 422, Refusal.RATE_LIMITED: 429,
               Refusal.OVERLOADED: 503}
MAX_BATCH_TXS = 4096
MAX_BATCH_BYTES = 2 * 1024 * 1024


def _refusal(exc: AdmissionError) -> web.Response:
    hdr = {"Retry-After": retry_after(exc.retry_after)} if exc.retry_after else None
    return err(HTTP_STATUS[exc.kind], exc.reason, hdr)


@routes.post("/v1/tx")
async def post_tx(req: web.Request) -> web.Response:
    """One transaction, or [transaction, sidecar] (node/sidecar.py). With `?wait=S` the answer
    waits up to S seconds (at most 30) for the commit and is then `GET /v1/tx/{id}`'s with the id
    (200; 202 while still pending), so a phone that waits for each write makes one request, not two."""
    v = validator(req)
    wait = min(max(int_query(req, "wait", 0), 0), 30)
    limits = req.app[LIMITS]
    body = await read_body(req, MAX_TX_BYTES + SIDECAR_MAX + 64, "transaction")
    if (over := limits.charge_txs(req, 1)) is not None:
        return over
    if (full := v.admission.full()) is not None:
        return _refusal(full)
    try:
        raw, side = decode_submission(body, MAX_TX_BYTES + SIDECAR_MAX + 64)
    except (WireError, SidecarError) as exc:
        return err(400, f"invalid submission: {exc}")
    if len(raw) > MAX_TX_BYTES:
        return err(413, f"transaction too large: {len(raw)} bytes, limit {MAX_TX_BYTES}")
    try:
        txid = await v.submit(raw, side)
    except AdmissionError as exc:
        limits.penalise_bad_signatures(req, int(exc.bad_signature))
        return _refusal(exc)
    if not wait:
        return web.json_response({"id": txid.hex(), "status": "pending"}, status=202)
    await v.wait_committed(txid, wait)
    st = tx_answer(v, txid)
    return web.json_response({"id": txid.hex(), **st}, status=202 if st["status"] in ("pending", "unknown") else 200)


@routes.post("/v1/txs")
async def post_txs(req: web.Request) -> web.Response:
    """A batch (a phone proxy's window): msgpack array of items, each a transaction's bytes or
    [transaction, sidecar] (node/sidecar.py)."""
    v = validator(req)
    limits = req.app[LIMITS]
    body = await read_body(req, MAX_BATCH_BYTES, "batch")
    if (full := v.admission.full()) is not None:  # before paying to decode it
        return _refusal(full)
    try:
        raws = decode(body, MAX_BATCH_BYTES, 1 + 3 * (MAX_BATCH_TXS + 1))  # items, each bytes or [tx, sidecar]
        if not isinstance(raws, list):
            raise SidecarError("expected a msgpack array of items")
        if len(raws) > MAX_BATCH_TXS:
            return err(413, f"batch too large: {len(raws)} transactions, limit {MAX_BATCH_TXS}")
        items = [parse_item(x) for x in raws]
    except (WireError, SidecarError) as exc:
        return err(400, f"invalid batch: {exc}")
    if (over := limits.charge_txs(req, len(items))) is not None:  # per transaction, not per request
        return over
    results = []
    out = await v.submit_many(items)
    limits.penalise_bad_signatures(req, sum(isinstance(r, AdmissionError) and r.bad_signature for r in out))
    for r in out:
        if isinstance(r, AdmissionError):
            res = {"status": HTTP_STATUS[r.kind], "error": r.reason}
            if r.retry_after:
                res["retry_after"] = int(retry_after(r.retry_after))
            results.append(res)
        else:
            results.append({"status": 202, "id": r.hex()})
    return web.json_response({"results": results})
