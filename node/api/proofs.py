"""Proven state reads: the certified head block's header and certificate, and for each requested
state key its value and its proof against that header's state root (docs/PROTOCOL.md, "Proofs in
the API"). A client that checks the certificate against the genesis keys and each proof needs to
trust no validator.

- `POST /v1/proofs` (node/api/chain.py), body msgpack [key, ...] (at most MAX_KEYS): msgpack
  [header_bytes, certificate, cert_view, [[value or nil, proof_bytes], ...]], one pair per key.
- `?proof=1` on the JSON read routes adds "proof": the same bundle (hex) for the keys the route read,
  and "proof_keys": those keys (hex), in the bundle's order. The JSON beside it is a convenience;
  a verifying client decodes the values from the bundle.
"""

from __future__ import annotations

from aiohttp import web

from node.validator import Validator
from node.wire import encode

MAX_KEYS = 1024  # per request: bounds the work one request puts on the event loop


def bundle(v: Validator, state_keys: list[bytes]) -> bytes | None:
    """The encoded proof bundle for `state_keys` at the committed head; None before block 1."""
    height, items = v.ledger.prove(state_keys)
    b = v.committer.block_at(height) if height else None  # the head is among the blocks kept decoded
    if b is None:
        return None
    return encode([b.header.encode(), [list(c) for c in b.cert], b.cert_view,
                   [[val, p.encode()] for val, p in items]])


def wants_proof(req: web.Request) -> bool:
    return req.query.get("proof") in ("1", "true")
