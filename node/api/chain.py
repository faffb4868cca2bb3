"""The chain and the node: `/v1/status`, `/v1/genesis`, a transaction's status with its inclusion
proof and its blob's availability, blocks, and the Prometheus `/metrics`."""

from __future__ import annotations

import time

from aiohttp import web

from node.api import proofs
from node.api.common import (
    MSGPACK,
    err,
    hex_param,
    int_query,
    read_body,
    validator,
)
from node.crypto.batch import backend_name
from node.ipfs.cid import CidError
from node.state import keys
from node.tx import KIND_WRITE, Tx
from node.tx.requests import NONCE_BYTES, head_digest
from node.validator import Validator
from node.wire import WireError, decode

routes = web.RouteTableDef()


@routes.get("/v1/status")
async def status(req: web.Request) -> web.Response:
    v = validator(req)
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
        "admission": v.backlog.status(len(v.mempool) + v.admission.checking, time.monotonic()),
        "consensus": v.consensus_status(), "storage": v.disk.status(),
        "base_height": v.ledger.base_height(), "state_transfer": v.sync.checkpoint_stats,
    })


@routes.get("/v1/head")
async def head(req: web.Request) -> web.Response:
    """This validator's head height, signed with its validator key over the client's nonce
    (docs/PROTOCOL.md 5, "Proofs in the API"): a client tells f+1 distinct validators' reports apart
    from one validator reached at several addresses."""
    v = validator(req)
    nonce = hex_param(req.query.get("nonce", ""), NONCE_BYTES, "nonce")
    height = v.ledger.head().height
    me = v.identity.public_key
    sig = v.identity.sign(head_digest(v.chain_id, me, nonce, height))
    return web.json_response({"height": height, "validator": me.hex(), "nonce": nonce.hex(), "signature": sig.hex()})


@routes.get("/v1/genesis")
async def genesis(req: web.Request) -> web.Response:
    """The genesis file as the validator loaded it (its own JSON and its recorded hash), so a client can
    compare it byte for byte with its copy and the hash the p2p network is named by."""
    v = validator(req)
    return web.json_response(v.genesis.document())


@routes.get("/v1/tx/{id}")
async def get_tx(req: web.Request) -> web.Response:
    v = validator(req)
    txid = hex_param(req.match_info["id"], 32, "transaction id")
    wait = min(max(int_query(req, "wait", 0), 0), 30)  # clamp as ints: float(10**400) overflows
    if wait:
        await v.wait_committed(txid, wait)
    st = tx_answer(v, txid)
    return web.json_response(st, status=404 if st["status"] == "unknown" else 200)


def tx_answer(v: Validator, txid: bytes) -> dict:
    """A transaction's status as `GET /v1/tx/{id}` answers it: committed with its proofs (and a
    write's blob availability), pending, rejected or unknown."""
    st = v.tx_status(txid)
    if st["status"] == "committed":
        add_availability(v, st)
        # the receipt [height, index, code] proven against the certified head: the result code
        # (what a phone acts on) is then no more the answering validator's word than the commit
        receipt = proofs.bundle(v, [keys.receipt(txid)])
        if receipt is not None:
            st["receipt"] = receipt.hex()
    return st


@routes.get("/v1/blocks/{height}")
async def get_block(req: web.Request) -> web.Response:
    v = validator(req)
    h = req.match_info["height"]
    # isascii: str.isdigit() is true for "²", which int() refuses (a 500 found by the fuzzer)
    # at most 19 digits: int() refuses a string over 4,300 digits (a 500), and heights are below 2**63
    height = v.ledger.head().height if h == "latest" else (int(h) if h.isascii() and h.isdigit() and len(h) <= 19
                                                            else -1)
    valid = 1 <= height < 2**63
    wait = min(max(int_query(req, "wait", 0), 0), 30)
    if wait and valid:  # a client following the chain: one request per block, no polling
        await v.committer.wait_height(height, wait)
    msgpack = req.query.get("format") == "msgpack"
    # JSON: a follower asks for the newest blocks, which the commit stage keeps decoded (no ledger
    # read, no decode); older ones come from the ledger through the same call
    found = (v.ledger.block_raw(height) if msgpack else v.committer.block_at(height)) if valid else None
    if found is None:
        base = v.ledger.base_height()
        if 1 <= height < base:
            return err(404, f"block {height} is below this validator's checkpoint (it started from the certified "
                            f"state at block {base}: a snapshot or state transfer) and is not held here; ask "
                            "another validator")
        return err(404, f"no block at height {h}")
    if isinstance(found, bytes):
        return web.Response(body=found, content_type=MSGPACK)
    b = found
    hd = b.header
    return web.json_response({
        "hash": b.hash.hex(), "height": hd.height, "prev_hash": hd.prev_hash.hex(), "view": hd.view,
        "seq": hd.seq, "time_ms": hd.time_ms, "tx_root": hd.tx_root.hex(), "state_root": hd.state_root.hex(),
        "proposer": hd.proposer, "tx_ids": [t.hex() for t in b.tx_ids],
        "certificate": [[i, s.hex()] for i, s in b.cert], "cert_view": b.cert_view,
        "header": b.header.encode().hex(),
    })


@routes.get("/metrics")
async def metrics(req: web.Request) -> web.Response:
    v = validator(req)
    return web.Response(body=v.metrics.render(), content_type="text/plain", charset="utf-8")


def add_availability(v: Validator, st: dict) -> None:
    """For a committed data write: how many validators hold its blob, and whether 2f+1 do."""
    block = v.committer.block_at(st["height"])
    if block is None:
        return
    tx = Tx.decode(block.txs[st["index"]], check_sig=False)
    if tx.kind == KIND_WRITE:
        try:
            blob = v.replicator.availability(tx.body.root, st["height"])
        except CidError:
            return
        st["available"] = blob["available"]
        st["blob"] = blob


PROOFS_BODY_MAX = 256 * proofs.MAX_KEYS + 16  # the array's header, MAX_KEYS keys of at most 256 bytes


@routes.post("/v1/proofs")
async def post_proofs(req: web.Request) -> web.Response:
    """State keys -> their values and proofs against the certified head (node/api/proofs.py)."""
    body = await read_body(req, PROOFS_BODY_MAX, "proofs request")  # in the body budgets like every route
    try:
        ks = decode(body, PROOFS_BODY_MAX)
    except WireError as exc:
        return err(400, f"invalid request: {exc}")
    if not (isinstance(ks, list) and 0 < len(ks) <= proofs.MAX_KEYS
            and all(isinstance(k, bytes) and 0 < len(k) <= 256 for k in ks)):
        return err(400, f"expected a msgpack array of 1..{proofs.MAX_KEYS} state keys")
    out = proofs.bundle(validator(req), ks)
    if out is None:
        return err(404, "no block is committed yet")
    return web.Response(body=out, content_type=MSGPACK)
