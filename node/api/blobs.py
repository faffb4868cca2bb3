"""Blobs: signed standalone uploads (`POST /v1/blobs`) and signed downloads (`GET /v1/blobs/{cid}`),
authorised by the patient's own key or by a committed read transaction the blob falls under."""

from __future__ import annotations

import time

from aiohttp import web

from node import clock
from node.api.common import (
    err,
    first_use,
    read_body,
    retry_after,
    signed_by,
    validator,
)
from node.api.limits import client_ip
from node.crypto import ecdsa
from node.crypto.keys import address_of
from node.ipfs.blockstore import IntegrityError, MissingBlock
from node.ipfs.cid import Cid, CidError
from node.state import Code, keys
from node.state.machine import (
    BREAK_GLASS_ACCESS_MS,
    Overlay,
    break_glass_enabled,
    clinician_issuer,
    key_access,
    read_allowed,
)
from node.state.records import BlobRec
from node.tx import KIND_READ, Tx
from node.tx.requests import blob_request_digest, blob_upload_digest
from node.validator import Validator

routes = web.RouteTableDef()


@routes.post("/v1/blobs")
async def post_blob(req: web.Request) -> web.Response:
    """A standalone upload (a blob too large to ride as a sidecar): signed by an account with a
    committed transaction, charged to its sender rate, collected unless a write names it in time."""
    v = validator(req)
    v.disk.check()  # a full disk refuses before the body is read
    data = await read_body(req, v.params.max_blob_bytes, "blob")
    me = v.identity.public_key
    pub = signed_by(req, v, "upload", lambda t_ms: blob_upload_digest(v.chain_id, me, ecdsa.sha256(data), len(data), t_ms))
    if isinstance(pub, web.Response):
        return pub
    uploader = address_of(pub)
    if v.committed_nonce(uploader) == 0:
        return err(403, "uploads are for accounts with a committed transaction: send small blobs as sidecars")
    now = time.monotonic()
    budget = v.uploads
    ip = client_ip(req)
    over = budget.refusal(uploader, len(data), now, ip)
    if over is not None:  # unpinned uploads stay for the grace: their bytes are bounded, per account and in all
        status, why, wait = over
        return err(status, why, {"Retry-After": retry_after(wait)})
    refused = first_use(req, "upload")  # before the rate is charged: a replay costs its signer nothing
    if refused is not None:
        return refused
    # one sender token per started MiB: an upload costs its patient's rate like a transaction
    wait = v.mempool.charge(uploader, now, 1 + len(data) // (1024 * 1024))
    if wait > 0:  # the client signs its retry anew (this signature counts as used)
        return err(429, f"rate limited: sender exceeds {v.params.sender_rate:g} tx/s",
                    {"Retry-After": retry_after(wait)})
    # UnixFS, Helia's defaults (<= 1 MiB is one raw block), group-committed off the event loop;
    # counted meanwhile, so that concurrent uploads of one account each see the others' bytes
    held = budget.hold(uploader, len(data), ip)
    try:
        cid, blocks = await v.blob_writer.put(data)
    except Exception as exc:
        raise v.disk.refusal("storing an upload", exc) from exc
    finally:
        budget.release(uploader, held, ip)
    budget.take(uploader, len(data), time.monotonic(), cid.multihash, ip)  # until a write pins it, or the grace ends
    v.replicator.stored(blocks)
    v.metrics.blobs.set(v.blobs.count())
    return web.json_response({"cid": str(cid), "size": len(data)}, status=201)


@routes.get("/v1/blobs/{cid}")
async def get_blob(req: web.Request) -> web.Response:
    v = validator(req)
    try:
        cid = Cid.parse(req.match_info["cid"])
    except CidError as exc:
        return err(400, f"bad cid: {exc}")
    try:
        read_id = bytes.fromhex(req.headers.get("X-Medchain-Read", ""))
    except ValueError:
        read_id = None
    me = v.identity.public_key
    pub = signed_by(req, v, "request", lambda t_ms: blob_request_digest(v.chain_id, me, cid.to_bytes(), read_id, t_ms),
                     " (and X-Medchain-Read for staff)", read_id is not None)
    if isinstance(pub, web.Response):
        return pub
    reader = address_of(pub)
    rec_raw = v.ledger.get_state(keys.blob(cid.to_bytes()))
    if rec_raw is None:
        return err(404, "cid is not on chain")
    rec = BlobRec.decode(rec_raw)
    if reader != rec.patient:
        reason = read_covers(v, read_id, reader, rec.patient, rec.dtype, cid.to_bytes(), rec.t_start_ms,
                             rec.t_end_ms, rec.height, rec.epoch)
        if reason:
            return err(403, reason)
    refused = first_use(req, "request")  # recorded only once authorised: a flood of others cannot fill it
    if refused is not None:
        return refused
    data = await load_blob(v, cid, rec.height)
    if isinstance(data, web.Response):
        return data
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"X-Medchain-Epoch": str(rec.epoch)})


def read_covers(v: Validator, read_id: bytes, reader: bytes, patient: bytes, dtype: int, cid: bytes,
                t0: int, t1: int, written: int, epoch: int) -> str | None:
    """None if the committed read transaction `read_id` lets `reader` fetch this blob (window
    t0..t1, recorded at height `written`, under key `epoch`) now, else why not. A read covers only
    what was on chain when it committed: its range ends at its block's time, so it never opens a
    later write."""
    if len(read_id) != 32:
        return "staff must name their committed read transaction (X-Medchain-Read)"
    rec = v.ledger.receipt(read_id)
    if rec is None:
        return "the read transaction is not committed"
    block = v.ledger.block(rec.height)
    tx = Tx.decode(block.txs[rec.tx_index], check_sig=False)
    if tx.kind != KIND_READ or tx.address != reader or rec.code != Code.OK:
        return "that transaction is not an allowed read by this requester"
    r = tx.body
    if r.patient != patient or r.dtype != dtype:
        return "the read transaction is for another patient or data type"
    if r.cid and r.cid != cid:
        return "the read transaction names another cid"
    if not r.cid and (t1 < r.t_from_ms or t0 > min(r.t_to_ms, block.header.time_ms)):
        return "the blob is outside the read transaction's time range (which ends at its block's time)"
    if written > rec.height:
        return "the blob was written after the read transaction committed: commit a new read"
    view, now_ms = Overlay(v.ledger.get_state), clock.now_ms()
    if r.reason:  # break-glass: no grant needed, but the patient's opt-out and the access window apply
        if not break_glass_enabled(view, patient):
            return "break-glass refused: the patient has disabled emergency access"
        if now_ms - block.header.time_ms >= BREAK_GLASS_ACCESS_MS:  # "less than 24 hours" (PROTOCOL.md 7)
            return "the break-glass read is too old: commit a new one"
        if clinician_issuer(view, reader, now_ms, v.admission.rules) is None:  # ended since the read (a review)
            return "break-glass refused: this reader no longer holds a valid clinician credential"
        if (view.get(keys.sealed_key(patient, reader, dtype, epoch)) is not None
                and not key_access(view, reader, patient, dtype, epoch, now_ms)):
            # a former grantee still holds this epoch's key: the ciphertext would be the data, and
            # break-glass would undo the patient's revocation (only the patient may give it again)
            return ("break-glass refused: this reader was given this blob's key epoch and no longer holds "
                    "access to it (revoked or ended): the patient's release is needed")
        return None
    if not read_allowed(view, reader, patient, dtype, now_ms):
        return "access denied by the patient's current policy"
    return None


async def load_blob(v: Validator, cid: Cid, height: int) -> bytes | web.Response:
    """The blob (recorded at `height`), every block verified: the local copy, or (missing or corrupt
    here) fetched from the other validators over bitswap; if that fails, repair goes on in the
    background. A corrupt local block is counted and refused (502)."""
    for attempt in (0, 1):
        try:
            return v.blobs.get_blob(cid)
        except IntegrityError as exc:
            v.metrics.blob_integrity.inc()
            failure = err(502, f"integrity error: {exc}")
        except MissingBlock:
            failure = err(404, "blob is on chain but not held by this validator (nor served by a peer)")
        except ValueError as exc:  # UnixfsError: a malformed DAG
            failure = err(502, f"integrity error: stored DAG is malformed: {exc}")
        if attempt or v.net is None:
            return failure
        v.replicator.refetch(cid, height)  # from peers; fetched blocks replace missing or corrupt ones
        if not await v.replicator.ensure(cid):
            return failure
    return failure
