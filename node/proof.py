"""Light-client checks: that a transaction is committed (the Merkle path to the block's tx root and
the block's commit certificate against the genesis validator keys), and that state keys hold the
values a validator claims (a proof bundle of `POST /v1/proofs`: a certified header and a state-tree
proof per key). Nothing the answering validator says is trusted beyond what these checks prove."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from node import merkle
from node.block import Block, BlockError, Header, verify_cert
from node.state import keys, smt
from node.state.records import Receipt
from node.wire import WireError, decode_canonical, value_budget

MAX_BUNDLE = 32 * 1024 * 1024
Values = dict[bytes, "bytes | None"]


class ProofError(ValueError):
    pass


def verify_inclusion(txid: bytes, index: int, tx_count: int, path: Sequence[bytes], block_raw: bytes,
                     validators: Sequence[bytes], chain_id: str) -> Block:
    """Return the block if `txid` is at `index` of a block certified by 2f+1 of `validators`."""
    try:
        block = Block.decode(block_raw)
    except BlockError as exc:
        raise ProofError(f"block does not decode: {exc}") from None
    if block.header.chain_id != chain_id:
        raise ProofError("block is from another chain")
    if tx_count != len(block.txs) or not 0 <= index < tx_count or block.tx_ids[index] != txid:
        raise ProofError("the transaction is not at that index of the block")
    if not verify_cert(block, validators):
        raise ProofError("commit certificate does not carry 2f+1 valid validator signatures")
    if not merkle.verify(txid, index, tx_count, path, block.header.tx_root):
        raise ProofError("Merkle path does not lead to the block's transaction root")
    return block


def verify_status(txid: bytes, st: dict[str, Any], validators: Sequence[bytes], chain_id: str) -> Header:
    """Check a committed answer of `GET /v1/tx/{id}` on its own: its `header` is certified by 2f+1
    of `validators` (`certificate`, `cert_view`) and its audit path (`proof`, `index`, `tx_count`) leads
    from `txid` to that header's transaction root. No block download: the header and certificate
    ride in the answer; its `height` and `block_hash` must be the header's. Its result `code` is
    proven too: `receipt` is a proof bundle for the receipt key at a certified head no lower than
    the block, holding [height, index, code]. Returns the header."""
    header = _json_certified_header(st, validators, chain_id)
    try:
        index, tx_count = st["index"], st["tx_count"]
        path = [bytes.fromhex(p) for p in st["proof"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"the answer carries no audit path ({exc!r})") from None
    if not (type(index) is int and type(tx_count) is int):
        raise ProofError("index and tx_count must be integers")
    if not merkle.verify(txid, index, tx_count, path, header.tx_root):
        raise ProofError("Merkle path does not lead to the block's transaction root")
    if st.get("height") != header.height or st.get("block_hash") != header.hash.hex():
        raise ProofError("the answer's height or block hash is not its certified header's")
    try:
        bundle = bytes.fromhex(st["receipt"])
    except (KeyError, TypeError, ValueError):
        raise ProofError("the answer carries no proven receipt") from None
    key = keys.receipt(txid)
    _, values = check_bundle(bundle, [key], chain_id, validators, header.height)
    raw = values[key]
    try:
        rec = Receipt.decode(cast(bytes, raw))  # proven absent (None: WireError) or not a receipt
    except (WireError, TypeError, ValueError):
        rec = None
    code = st.get("code")  # an int, as the receipt's: false or 0.0 would compare equal to 0
    if rec is None or type(code) is not int or (rec.height, rec.tx_index, rec.code) != (header.height, index, code):
        raise ProofError(f"the proven receipt {tuple(rec) if rec else raw!r} is not the answer's "
                         f"(height {header.height}, index {index}, code {code!r})")
    return header


def verify_block_json(blk: dict[str, Any], validators: Sequence[bytes], chain_id: str) -> Header:
    """Check a block as `GET /v1/blocks/{h}` gives it in JSON, for a client that follows the chain:
    its `header` certified by 2f+1 of `validators` (`certificate`, `cert_view`), its `tx_ids` exactly
    the leaves under the header's `tx_root`, and its `height` the header's. Returns the header."""
    header = _json_certified_header(blk, validators, chain_id)
    try:
        ids = [bytes.fromhex(t) for t in blk["tx_ids"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"the block carries no transaction ids ({exc!r})") from None
    if merkle.root(ids) != header.tx_root:
        raise ProofError(f"block {header.height}: its transaction ids are not the ones under its certified tx_root")
    if blk.get("height") != header.height:
        raise ProofError("the block's height is not its certified header's")
    return header


def _json_certified_header(d: dict[str, Any], validators: Sequence[bytes], chain_id: str) -> Header:
    """The header of a JSON answer (`header`, `certificate`, `cert_view`, as `GET /v1/tx` and
    `GET /v1/blocks` give them), if it is of `chain_id` and certified by 2f+1 of `validators`."""
    try:
        header_raw = bytes.fromhex(d["header"])
        cert = [(i, bytes.fromhex(sig)) for i, sig in d["certificate"]]
        cert_view = d["cert_view"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"the answer carries no certified header ({exc!r})") from None
    if not all(type(x) is int for x in (cert_view, *(i for i, _ in cert))):
        raise ProofError("cert_view and validator indexes must be integers")
    if not 0 <= cert_view < 2**64:  # JSON ints are unbounded: the vote's msgpack encoding would overflow
        raise ProofError(f"cert_view {cert_view} is out of range")
    return _certified_header(header_raw, cert, cert_view, validators, chain_id)


def _certified_header(header_raw: bytes, cert: Sequence[tuple[int, bytes]], cert_view: int,
                      validators: Sequence[bytes], chain_id: str) -> Header:
    """The header, if it is of `chain_id` and 2f+1 of `validators` signed its commit vote."""
    return _certified(header_raw, tuple(cert), cert_view, tuple(validators), chain_id)


@functools.lru_cache(maxsize=256)  # a client checks many commits of one block: its 2f+1 signatures once
def _certified(header_raw: bytes, cert: tuple[tuple[int, bytes], ...], cert_view: int,
               validators: tuple[bytes, ...], chain_id: str) -> Header:
    try:
        header = Header.decode(header_raw)
    except BlockError as exc:
        raise ProofError(f"bad header: {exc}") from None
    if header.chain_id != chain_id:
        raise ProofError(f"header of chain {header.chain_id!r}")
    if cert_view < header.view or not verify_cert(Block(header, (), cert, cert_view), validators):
        raise ProofError(f"block {header.height}: the certificate lacks 2f+1 valid genesis validator signatures")
    return header


def check_bundle(raw: bytes, state_keys: Sequence[bytes], chain_id: str, validators: Sequence[bytes],
                 min_height: int) -> tuple[Header, Values]:
    """Verify a proof bundle for `state_keys`: its header and the proven values. Raises ProofError
    (a ValueError) unless the header is of `chain_id`, certified by 2f+1 of `validators`, at height
    `min_height` or above, and every key's proof leads to its state root."""
    try:
        b = decode_canonical(raw, MAX_BUNDLE, value_budget(raw))
    except WireError as exc:
        raise ProofError(f"proof bundle does not decode: {exc}") from None
    if not (isinstance(b, list) and len(b) == 4 and isinstance(b[0], bytes) and isinstance(b[1], list)
            and type(b[2]) is int and isinstance(b[3], list)):
        raise ProofError("proof bundle is [header, certificate, cert_view, entries]")
    if not all(isinstance(c, list) and len(c) == 2 and type(c[0]) is int and isinstance(c[1], bytes) for c in b[1]):
        raise ProofError("a certificate is [[validator_index, signature], ...]")
    header = _certified_header(b[0], [(c[0], c[1]) for c in b[1]], b[2], validators, chain_id)
    if header.height < min_height:
        raise ProofError(f"stale header: block {header.height}, but block {min_height} is already known")
    if len(b[3]) != len(state_keys):
        raise ProofError(f"{len(b[3])} proofs for {len(state_keys)} keys")
    out: Values = {}
    for k, ent in zip(state_keys, b[3], strict=True):
        if not (isinstance(ent, list) and len(ent) == 2 and (ent[0] is None or isinstance(ent[0], bytes))
                and isinstance(ent[1], bytes)):
            raise ProofError("a proof entry is [value or nil, proof]")
        try:
            proof = smt.Proof.decode(ent[1])
        except ValueError as exc:
            raise ProofError(f"{_proof_for(k)}: {exc}") from None
        if not smt.verify(header.state_root, k, ent[0], proof):
            raise ProofError(f"{_proof_for(k)} does not lead to the certified state root")
        out[k] = ent[0]
    return header, out


def _proof_for(key: bytes) -> str:
    """How a refusal names a key's proof: its prefix byte and the next 8 bytes in hex."""
    return f"proof for state key {key[:1]!r}{key[1:9].hex()}…"
