"""Proven state reads: the certified head block's header and certificate, and for each requested
state key its value and its proof against that header's state root (docs/PROTOCOL.md, "Proofs in
the API"). A client that checks the certificate against the genesis keys and each proof needs to
trust no validator.

- `POST /v1/proofs`, body msgpack [key, ...] (at most MAX_KEYS): msgpack
  [header_bytes, certificate, cert_view, [[value or nil, proof_bytes], ...]], one pair per key.
- `?proof=1` on the JSON read routes adds "proof": the same bundle (hex) for the keys the route read,
  and "proof_keys": those keys (hex), in the bundle's order. The JSON beside it is a convenience;
  a verifying client decodes the values from the bundle.
"""

from __future__ import annotations

from aiohttp import web

from node.block import Block
from node.validator import Validator
from node.wire import WireError, decode, encode

MAX_KEYS = 1024  # per request: bounds the work one request puts on the event loop
MSGPACK = "application/msgpack"


def bundle(v: Validator, state_keys: list[bytes]) -> bytes | None:
    """The encoded proof bundle for `state_keys` at the committed head; None before block 1."""
    raw, items = v.ledger.prove(state_keys)
    if raw is None:
        return None
    b = Block.decode(raw)
    return encode([b.header.encode(), [list(c) for c in b.cert], b.cert_view,
                   [[val, p.encode()] for val, p in items]])


def wants_proof(req: web.Request) -> bool:
    return req.query.get("proof") in ("1", "true")


def add_routes(routes: web.RouteTableDef, v: Validator) -> None:
    @routes.post("/v1/proofs")
    async def proofs(req: web.Request) -> web.Response:
        body = await req.read()
        try:
            ks = decode(body, 256 * MAX_KEYS)
        except WireError as exc:
            return web.json_response({"error": f"invalid request: {exc}"}, status=400)
        if not (isinstance(ks, list) and 0 < len(ks) <= MAX_KEYS
                and all(isinstance(k, bytes) and 0 < len(k) <= 256 for k in ks)):
            return web.json_response({"error": f"expected a msgpack array of 1..{MAX_KEYS} state keys"}, status=400)
        out = bundle(v, ks)
        if out is None:
            return web.json_response({"error": "no block is committed yet"}, status=404)
        return web.Response(body=out, content_type=MSGPACK)
