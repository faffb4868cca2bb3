"""aiohttp routes over a Validator. Every refusal is a 4xx with a JSON {"error": reason}."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from node import clock
from node.api import proofs
from node.api.limits import Limits, cap_connections, serve_kwargs
from node.api.limits import retry_after as _retry_after
from node.api.shapes import audit_entry, data_entry, grant_entry, sealed_entry
from node.block import Block
from node.crypto import ecdsa
from node.crypto.batch import backend_name
from node.crypto.keys import address_of
from node.ipfs.blockstore import IntegrityError, MissingBlock
from node.ipfs.cid import Cid, CidError
from node.mempool import AdmissionError, KeyedLimiter
from node.sidecar import SIDECAR_MAX, SidecarError, decode_submission, parse_item
from node.state import keys
from node.state.machine import BREAK_GLASS_ACCESS_MS, Overlay, break_glass_enabled, read_allowed
from node.storage import StorageFull
from node.tx import DATA_TYPES, KIND_READ, KIND_WRITE, Tx
from node.tx.requests import blob_request_digest, blob_upload_digest
from node.validator import Validator
from node.wire import MAX_TX_BYTES, WireError, decode

log = logging.getLogger("medchain.api")
MSGPACK = "application/msgpack"
MAX_BATCH_TXS = 4096
MAX_BATCH_BYTES = 2 * 1024 * 1024
LIMITS = web.AppKey("limits", Limits)


def _err(status: int, reason: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


async def _read_body(req: web.Request, limit: int, what: str) -> bytes:
    """The request body within `limit` and the client's and server's in-flight budgets (limits.py)."""
    return await req.app[LIMITS].read_body(req, limit, what)


def _hex(s: str, n: int, what: str) -> bytes:
    try:
        b = bytes.fromhex(s)
    except ValueError:
        b = b""
    if len(b) != n:
        raise web.HTTPBadRequest(text=f'{{"error": "{what} must be {n} bytes of hex"}}', content_type="application/json")
    return b


def _int_q(req: web.Request, name: str, default: int) -> int:
    try:
        return int(req.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f'{{"error": "{name} must be an integer"}}',
                                 content_type="application/json") from None


def make_app(v: Validator) -> web.Application:
    max_blob = v.params.max_blob_bytes
    v.metrics.bind(v)
    app = web.Application(client_max_size=max_blob + 4096)
    routes = web.RouteTableDef()

    @web.middleware
    async def count(req: web.Request, handler):  # noqa: ANN001, ANN202
        resp = await handler(req)
        route = req.match_info.route.resource.canonical if req.match_info.route.resource else "unmatched"
        v.metrics.http.labels(route, str(resp.status)).inc()
        return resp

    app.middlewares.append(count)
    clients = KeyedLimiter(v.params.client_rate, v.params.client_burst)

    @web.middleware
    async def per_client(req: web.Request, handler):  # noqa: ANN001, ANN202
        """The per-connection limit: a token bucket per client IP over all requests, so one host
        cannot monopolise the API (per-sender limits apply to transactions on top)."""
        ip = req.remote or "unknown"
        wait = clients.take(ip, time.monotonic())
        if wait > 0:
            v.metrics.throttled.labels("client_ip").inc()
            return _err(429, f"rate limited: client {ip} exceeds {v.params.client_rate:g} requests/s",
                        {"Retry-After": _retry_after(wait)})
        return await handler(req)

    app.middlewares.append(per_client)
    limits = app[LIMITS] = Limits(v.params, lambda scope: v.metrics.throttled.labels(scope).inc(), MAX_BATCH_TXS,
                                  v.mempool.origin_full)
    app.middlewares.append(limits.middleware)

    @web.middleware
    async def storage_full(req: web.Request, handler):  # noqa: ANN001, ANN202
        """The one place a full disk becomes HTTP: 507 Insufficient Storage, with Retry-After."""
        try:
            return await handler(req)
        except StorageFull as exc:
            return _err(507, exc.reason, {"Retry-After": _retry_after(exc.retry_after)})

    app.middlewares.append(storage_full)

    @routes.get("/v1/status")
    async def status(req: web.Request) -> web.Response:
        head = v.ledger.head()
        return web.json_response({
            "chain_id": v.chain_id, "height": head.height, "last_block_hash": head.hash.hex(),
            "state_root": head.state_root.hex(), "validators": v.n, "validator_index": v.index,
            "view": v.replica.view, "primary": v.replica.primary, "mempool_size": len(v.mempool),
            "blobs": v.blobs.count(), "crypto": backend_name(), "p2p_mode": v.p2p_mode if v.n > 1 else None,
            "p2p_messages_in": v.msgs_in, "p2p_messages_out": v.msgs_out,
            "peers": len(v.net.connected_peers()) if v.net is not None else 0,
            "streams_out": len(v.net.streaming_peers()) if v.net is not None else 0,
            "bitswap": v.net.bitswap_stats() if v.net is not None else {}, "replication": v.replicator.stats,
            "availability": v.gate.stats,
            "consensus": v.consensus_status(), "storage": v.disk.status(),
        })

    @routes.get("/v1/genesis")
    async def genesis(req: web.Request) -> web.Response:
        return web.json_response(v.genesis.to_json())

    @routes.post("/v1/tx")
    async def post_tx(req: web.Request) -> web.Response:
        """One transaction, or [transaction, sidecar] (node/sidecar.py)."""
        body = await _read_body(req, MAX_TX_BYTES + SIDECAR_MAX + 64, "transaction")
        if (over := limits.charge_txs(req, 1)) is not None:
            return over
        try:
            raw, side = decode_submission(body, MAX_TX_BYTES + SIDECAR_MAX + 64)
        except (WireError, SidecarError) as exc:
            return _err(400, f"invalid submission: {exc}")
        if len(raw) > MAX_TX_BYTES:
            return _err(413, f"transaction too large: {len(raw)} bytes, limit {MAX_TX_BYTES}")
        try:
            txid = await v.submit(raw, side)
        except AdmissionError as exc:
            limits.penalise_bad_signatures(req, int(exc.bad_signature))
            hdr = {"Retry-After": _retry_after(exc.retry_after)} if exc.retry_after else None
            return _err(exc.status, exc.reason, hdr)
        return web.json_response({"id": txid.hex(), "status": "pending"}, status=202)

    @routes.post("/v1/txs")
    async def post_txs(req: web.Request) -> web.Response:
        """A batch (a phone proxy's window): msgpack array of items, each a transaction's bytes or
        [transaction, sidecar] (node/sidecar.py)."""
        body = await _read_body(req, MAX_BATCH_BYTES, "batch")
        try:
            raws = decode(body, MAX_BATCH_BYTES)
            if not isinstance(raws, list):
                raise SidecarError("expected a msgpack array of items")
            if len(raws) > MAX_BATCH_TXS:
                return _err(413, f"batch too large: {len(raws)} transactions, limit {MAX_BATCH_TXS}")
            items = [parse_item(x) for x in raws]
        except (WireError, SidecarError) as exc:
            return _err(400, f"invalid batch: {exc}")
        if (over := limits.charge_txs(req, len(items))) is not None:  # per transaction, not per request
            return over
        results = []
        out = await v.submit_many(items)
        limits.penalise_bad_signatures(req, sum(isinstance(r, AdmissionError) and r.bad_signature for r in out))
        for r in out:
            if isinstance(r, AdmissionError):
                res = {"status": r.status, "error": r.reason}
                if r.retry_after:
                    res["retry_after"] = int(_retry_after(r.retry_after))
                results.append(res)
            else:
                results.append({"status": 202, "id": r.hex()})
        return web.json_response({"results": results})

    @routes.get("/v1/tx/{id}")
    async def get_tx(req: web.Request) -> web.Response:
        txid = _hex(req.match_info["id"], 32, "transaction id")
        wait = min(max(_int_q(req, "wait", 0), 0), 30)  # clamp as ints: float(10**400) overflows
        if wait:
            await v.wait_committed(txid, wait)
        st = v.tx_status(txid)
        if st["status"] == "committed":
            _add_availability(v, st)
        return web.json_response(st, status=404 if st["status"] == "unknown" else 200)

    @routes.get("/v1/blocks/{height}")
    async def get_block(req: web.Request) -> web.Response:
        h = req.match_info["height"]
        # isascii: str.isdigit() is true for "²", which int() refuses (a 500 found by the fuzzer)
        height = v.ledger.head().height if h == "latest" else (int(h) if h.isascii() and h.isdigit() else -1)
        raw = v.ledger.block_raw(height) if 1 <= height < 2**63 else None
        if raw is None:
            return _err(404, f"no block at height {h}")
        if req.query.get("format") == "msgpack":
            return web.Response(body=raw, content_type=MSGPACK)
        b = Block.decode(raw)
        hd = b.header
        return web.json_response({
            "hash": b.hash.hex(), "height": hd.height, "prev_hash": hd.prev_hash.hex(), "view": hd.view,
            "seq": hd.seq, "time_ms": hd.time_ms, "tx_root": hd.tx_root.hex(), "state_root": hd.state_root.hex(),
            "proposer": hd.proposer, "tx_ids": [t.hex() for t in b.tx_ids],
            "certificate": [[i, s.hex()] for i, s in b.cert], "cert_view": b.cert_view,
            "header": b.header.encode().hex(),
        })

    @routes.post("/v1/blobs")
    async def post_blob(req: web.Request) -> web.Response:
        """A standalone upload (a blob too large to ride as a sidecar): signed by an account with a
        committed transaction, charged to its sender rate, collected unless a write names it in time."""
        v.disk.check()  # a full disk refuses before the body is read
        data = await _read_body(req, max_blob, "blob")
        pub = _signed_by(req, v, "upload", lambda t_ms: blob_upload_digest(v.chain_id, ecdsa.sha256(data), len(data), t_ms))
        if isinstance(pub, web.Response):
            return pub
        uploader = address_of(pub)
        if v.committed_nonce(uploader) == 0:
            return _err(403, "uploads are for accounts with a committed transaction: send small blobs as sidecars")
        # one sender token per started MiB: an upload costs its patient's rate like a transaction
        wait = v.mempool.charge(uploader, time.monotonic(), 1 + len(data) // (1024 * 1024))
        if wait > 0:
            return _err(429, f"rate limited: sender exceeds {v.params.sender_rate:g} tx/s",
                        {"Retry-After": _retry_after(wait)})
        # UnixFS, Helia's defaults (<= 1 MiB is one raw block), group-committed off the event loop
        try:
            cid, blocks = await v.blob_writer.put(data)
        except Exception as exc:
            raise v.disk.refusal("storing an upload", exc) from exc
        v.replicator.stored(blocks)
        v.metrics.blobs.set(v.blobs.count())
        return web.json_response({"cid": str(cid), "size": len(data)}, status=201)

    @routes.get("/v1/blobs/{cid}")
    async def get_blob(req: web.Request) -> web.Response:
        try:
            cid = Cid.parse(req.match_info["cid"])
        except CidError as exc:
            return _err(400, f"bad cid: {exc}")
        try:
            read_id = bytes.fromhex(req.headers.get("X-Medchain-Read", ""))
        except ValueError:
            read_id = None
        pub = _signed_by(req, v, "request", lambda t_ms: blob_request_digest(v.chain_id, cid.to_bytes(), read_id, t_ms),
                         " (and X-Medchain-Read for staff)", read_id is not None)
        if isinstance(pub, web.Response):
            return pub
        reader = address_of(pub)
        rec_raw = v.ledger.get_state(keys.blob(cid.to_bytes()))
        if rec_raw is None:
            return _err(404, "cid is not on chain")
        rec = decode(rec_raw)
        patient, dtype, t0, t1 = rec[0], rec[1], rec[4], rec[5]
        if reader != patient:
            reason = _read_covers(v, read_id, reader, patient, dtype, cid.to_bytes(), t0, t1)
            if reason:
                return _err(403, reason)
        data = await _load_blob(v, cid)
        if isinstance(data, web.Response):
            return data
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"X-Medchain-Epoch": str(rec[2])})

    @routes.get("/v1/accounts/{addr}")
    async def account(req: web.Request) -> web.Response:
        addr = _hex(req.match_info["addr"], 32, "address")
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
            p = decode(prof)
            out["profile"] = {"name": p[0], "role": p[1], "org": p[2], "x25519_public": p[3].hex(),
                              "public_key": p[4].hex(), "height": p[5]}
        return _with_proof(req, out, [keys.profile(addr), keys.nonce(addr), keys.policy(addr),
                                      *(keys.epoch(addr, t) for t in DATA_TYPES.values())])

    @routes.get("/v1/patients/{addr}/audit")
    async def audit(req: web.Request) -> web.Response:
        addr = _hex(req.match_info["addr"], 32, "address")
        out, read = [], [keys.audit_count(addr)]
        for k, raw in v.ledger.scan_state(keys.audit_prefix(addr), _int_q(req, "limit", 10_000)):
            entry = decode(raw)
            rec = decode(v.ledger.get_state(keys.receipt(entry[6])))
            out.append(audit_entry(entry, rec[0]))
            read += [k, keys.receipt(entry[6])]
        # emergency reads first and apart, so a patient cannot miss them
        emergency = [r for r in out if r["break_glass"]]
        return _with_proof(req, {"patient": addr.hex(), "break_glass": emergency, "reads": out}, read)

    @routes.get("/v1/patients/{addr}/grants")
    async def grants(req: web.Request) -> web.Response:
        addr = _hex(req.match_info["addr"], 32, "address")
        out = [grant_entry(keys.grant_staff(k), decode(raw)) for k, raw in v.ledger.scan_state(keys.grants_prefix(addr))]
        n = decode(v.ledger.get_state(keys.grant_count(addr)) or b"\x00")
        read = [keys.grant_count(addr), *(keys.grant_entry(addr, i) for i in range(n)),
                *(keys.grant(addr, bytes.fromhex(g["staff"])) for g in out)]
        return _with_proof(req, {"patient": addr.hex(), "grants": out}, read)

    @routes.get("/v1/patients/{addr}/keys/{staff}")
    async def sealed_keys(req: web.Request) -> web.Response:
        addr = _hex(req.match_info["addr"], 32, "address")
        staff = _hex(req.match_info["staff"], 32, "staff address")
        found = v.ledger.scan_state(keys.sealed_keys_prefix(addr, staff))
        out = [sealed_entry(k, raw) for k, raw in found]
        return _with_proof(req, {"keys": out}, [k for k, _ in found])

    @routes.get("/v1/patients/{addr}/data")
    async def data(req: web.Request) -> web.Response:
        addr = _hex(req.match_info["addr"], 32, "address")
        dtype = None
        if "type" in req.query:
            if req.query["type"] not in DATA_TYPES:
                return _err(400, f"unknown data type {req.query['type']!r}")
            dtype = DATA_TYPES[req.query["type"]]
        t_from, t_to = _int_q(req, "from", 0), _int_q(req, "to", 2**63 - 1)
        out = []
        for k, _ in v.ledger.scan_state(keys.data_index_prefix(addr, dtype)):
            cidb = keys.data_index_cid(k)
            rec = decode(v.ledger.get_state(keys.blob(cidb)))
            if rec[5] < t_from or rec[4] > t_to:
                continue
            out.append(data_entry(cidb, rec))
        read: list[bytes] = []
        if proofs.wants_proof(req):  # the whole committed list: a client filters what it proved itself
            n = decode(v.ledger.get_state(keys.data_count(addr)) or b"\x00")
            ents = [keys.data_entry(addr, i) for i in range(n)]
            read = [keys.data_count(addr), *ents, *(keys.blob(v.ledger.get_state(e)) for e in ents)]
        return _with_proof(req, {"patient": addr.hex(), "data": out}, read)

    @routes.get("/metrics")
    async def metrics(req: web.Request) -> web.Response:
        return web.Response(body=v.metrics.render(), content_type="text/plain", charset="utf-8")

    def _with_proof(req: web.Request, out: dict, read: list[bytes]) -> web.Response:
        if proofs.wants_proof(req):
            if len(read) > proofs.MAX_KEYS:
                out["proof"], out["proof_error"] = None, (f"{len(read)} keys: fetch them from POST /v1/proofs "
                                                          f"in requests of at most {proofs.MAX_KEYS}")
            else:
                b = proofs.bundle(v, read) if read else None
                out["proof"] = None if b is None else b.hex()
            out["proof_keys"] = [k.hex() for k in read]  # what the bundle proves, in its order
        return web.json_response(out)

    proofs.add_routes(routes, v)
    app.add_routes(routes)
    return app


def _signed_by(req: web.Request, v: Validator, what: str, digest: Callable[[int], bytes], extra: str = "",
               well_formed: bool = True) -> bytes | web.Response:
    """The signer's public key once X-Medchain-Pubkey, -Time and -Signature check out against
    `digest(time_ms)` (docs/PROTOCOL.md 6.1 and 7), else the 401 to answer."""
    h = req.headers
    try:
        pub = bytes.fromhex(h["X-Medchain-Pubkey"])
        t_ms = int(h["X-Medchain-Time"])
        sig = bytes.fromhex(h["X-Medchain-Signature"])
    except (KeyError, ValueError):
        well_formed = False
    if not well_formed:
        return _err(401, f"a signed {what} is required: X-Medchain-Pubkey, X-Medchain-Time, X-Medchain-Signature{extra}")
    # integer ms: a huge X-Medchain-Time must not overflow a float (a 500 found by fuzzing)
    off = clock.now_ms() - t_ms
    if abs(off) > v.params.request_skew_ms:
        by = f"{abs(off) // 1000} s" if abs(off) < 10**15 else "more than 10^12 s"  # ints: a huge time must not overflow
        why = (f"request time is too far from this validator's clock: {by} {'behind' if off > 0 else 'ahead of'} "
               f"it (at most {v.params.request_skew_ms // 1000} s); check this client's clock, or ask another validator")
        log.info("refused a signed %s: %s", what, why)
        return _err(401, why)
    if not ecdsa.verify(pub, digest(t_ms), sig):
        return _err(401, f"bad {what} signature")
    return pub


def _read_covers(v: Validator, read_id: bytes, reader: bytes, patient: bytes, dtype: int, cid: bytes,
                 t0: int, t1: int) -> str | None:
    """None if the committed read transaction `read_id` lets `reader` fetch this blob now, else why not."""
    if len(read_id) != 32:
        return "staff must name their committed read transaction (X-Medchain-Read)"
    loc = v.ledger.tx_location(read_id)
    if loc is None:
        return "the read transaction is not committed"
    rec = decode(v.ledger.get_state(keys.receipt(read_id)))
    block = v.ledger.block(loc[0])
    tx = Tx.decode(block.txs[loc[1]], check_sig=False)
    if tx.kind != KIND_READ or tx.address != reader or rec[2] != 0:
        return "that transaction is not an allowed read by this requester"
    r = tx.body
    if r.patient != patient or r.dtype != dtype:
        return "the read transaction is for another patient or data type"
    if r.cid and r.cid != cid:
        return "the read transaction names another cid"
    if not r.cid and (t1 < r.t_from_ms or t0 > r.t_to_ms):
        return "the blob is outside the read transaction's time range"
    view, now_ms = Overlay(v.ledger.get_state), clock.now_ms()
    if r.reason:  # break-glass: no grant needed, but the patient's opt-out and the access window apply
        if not break_glass_enabled(view, patient):
            return "break-glass refused: the patient has disabled emergency access"
        if now_ms - block.header.time_ms > BREAK_GLASS_ACCESS_MS:
            return "the break-glass read is too old: commit a new one"
        return None
    if not read_allowed(view, reader, patient, dtype, now_ms):
        return "access denied by the patient's current policy"
    return None


def _add_availability(v: Validator, st: dict) -> None:
    """For a committed data write: how many validators hold its blob, and whether 2f+1 do."""
    block = v.ledger.block(st["height"])
    tx = Tx.decode(block.txs[st["index"]], check_sig=False)
    if tx.kind == KIND_WRITE:
        try:
            blob = v.replicator.availability(Cid.from_bytes(tx.body.cid), st["height"])
        except CidError:
            return
        st["available"] = blob["available"]
        st["blob"] = blob


async def _load_blob(v: Validator, cid: Cid) -> bytes | web.Response:
    """The blob, every block verified: the local copy, or (missing or corrupt here) fetched from
    the other validators over bitswap. A corrupt local block is counted and refused (502)."""
    for attempt in (0, 1):
        try:
            return v.blobs.get_blob(cid)
        except IntegrityError as exc:
            v.metrics.blob_integrity.inc()
            failure = _err(502, f"integrity error: {exc}")
        except MissingBlock:
            failure = _err(404, "blob is on chain but not held by this validator (nor served by a peer)")
        except ValueError as exc:  # UnixfsError: a malformed DAG
            failure = _err(502, f"integrity error: stored DAG is malformed: {exc}")
        if attempt or v.net is None:
            return failure
        v.blobs.unlist(cid)  # refetch from peers; fetched blocks replace missing or corrupt ones
        if not await v.replicator.ensure(cid):
            return failure
    return failure


async def serve(v: Validator, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(v), access_log=None, **serve_kwargs(v.params))
    await runner.setup()
    cap_connections(runner.server, v.params.client_max_conns, v.metrics.throttled.labels("connections").inc)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
