"""Fuzz targets: each takes untrusted bytes and checks the decoder's contract.

A decoder may only refuse with its own error type (WireError, TxError, BlockError, GattError,
ConsensusError: all ValueErrors with a reason); anything else escaping is a bug. What it accepts
must re-encode to exactly the same bytes (one value, one encoding: docs/PROTOCOL.md section 1).
The same functions run under atheris (tests/fuzz/run.py), hypothesis (test_properties.py) and the
crash-regression replay (test_fuzz.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from devices.wearable import gatt
from node.block import Block, BlockError
from node.consensus import ConsensusError, decode_message
from node.tx import Tx, TxError
from node.tx.model import VERSION
from node.wire import MAX_BLOCK_BYTES, WireError, decode, decode_canonical, encode
from node.wire.codec import decode_canonical_py, decode_py


def _outcome(fn: Callable[[bytes, int], Any], data: bytes) -> tuple[str, Any]:
    try:
        return "ok", _typed(fn(data, MAX_BLOCK_BYTES))
    except WireError:
        return "refused", None


def _typed(v: Any) -> Any:
    """A value with each scalar's type beside it: True and 1 compare unequal."""
    return [_typed(x) for x in v] if type(v) is list else (type(v).__name__, v)


def fuzz_wire(data: bytes) -> None:
    # the codec's native fast path (native/_wire.pyx) and the pure-Python reference agree exactly
    assert _outcome(decode, data) == _outcome(decode_py, data), "native decode differs from the reference"
    assert _outcome(decode_canonical, data) == _outcome(decode_canonical_py, data), \
        "native canonical decode differs from the reference"
    try:
        obj = decode(data, MAX_BLOCK_BYTES)
    except WireError:
        return
    again = encode(obj)
    assert decode(again, MAX_BLOCK_BYTES) == obj, "decode(encode(x)) != x"
    try:
        canon = decode_canonical(data, MAX_BLOCK_BYTES)
    except WireError:
        assert again != bytes(data), "canonical bytes refused as non-canonical"
        return
    assert canon == obj and again == bytes(data), "accepted non-canonical bytes"


def fuzz_tx(data: bytes) -> None:
    try:
        tx = Tx.decode(data, check_sig=False)
    except (TxError, WireError):
        return
    assert encode([tx.payload, tx.sig]) == bytes(data), "transaction does not re-encode to its bytes"
    rebuilt = encode([VERSION, tx.kind, tx.chain_id, tx.sender, tx.nonce, *tx.body.fields()])
    assert rebuilt == tx.payload, "payload does not re-encode from its parsed fields"


def fuzz_block(data: bytes) -> None:
    try:
        b = Block.decode(data)
    except BlockError:
        return
    assert b.encode() == bytes(data), "block does not re-encode to its bytes"
    b.tx_ids  # noqa: B018 - hashing every transaction must not fail either
    b.check_tx_root()


def fuzz_consensus(data: bytes) -> None:
    try:
        m = decode_message(data)
    except ConsensusError:
        return
    assert m.encode() == bytes(data), "consensus message does not re-encode to its bytes"


_UUIDS = sorted(gatt.KIND_BY_UUID)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9)
        for k in a)


def fuzz_gatt(data: bytes) -> None:
    """First byte picks the characteristic (or an unknown one), the rest is the frame. A frame that
    decodes must re-encode from its measurement, and that frame must decode to the same values."""
    if not data:
        return
    uuid = _UUIDS[data[0] % len(_UUIDS)] if data[0] < 250 else 0x2A00 + data[0]
    frame = bytes(data[1:])
    try:
        m = gatt.decode_measurement(uuid, frame)
        r = gatt.decode(uuid, frame, 1_700_000_000_000)
    except gatt.GattError:
        return
    again = gatt.decode(uuid, m.encode(), 1_700_000_000_000)
    assert again.kind == r.kind and again.unit == r.unit and _same(again.values, r.values), (r, again)


TARGETS = {"wire": fuzz_wire, "tx": fuzz_tx, "block": fuzz_block, "consensus": fuzz_consensus, "gatt": fuzz_gatt}


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs of each kind, so the fuzzers start from deep inside the decoders."""
    from devices.wearable.wearables import make_wearable
    from node.block import Header
    from node.consensus.messages import T_PREPARE, Prepare, PrePrepare
    from node.crypto.keys import Identity
    from node.tx import Grant, Policy, Profile, Read, SealedKey, Write

    a = Identity.from_seed(b"fuzz-a")
    bodies = [Grant(bytes(32), (1, 2), 0, (SealedKey(1, 0, b"k" * 80),)), Profile("Dr", "md", "org", bytes(32)),
              Policy(False), Write(1, b"\x01\x55\x12\x20" + bytes(32), 100, 0, 1, 2),
              Read(bytes(32), 1, b"", 0, 10), Read(bytes(32), 2, b"", 0, 10, "ETREAT")]
    txs = [Tx.build(a, "medchain-fuzz", i + 1, b).raw for i, b in enumerate(bodies)]
    hdr = Header("medchain-fuzz", 1, bytes(32), 0, 1, 5, bytes(32), bytes(32), 0)
    block = Block(hdr, tuple(txs[:3]), ((0, bytes(64)),))
    msgs = [Prepare(0, 1, hdr.hash, 2, bytes(64)).encode(), PrePrepare(0, 1, hdr.hash, 0, bytes(64), block).encode()]
    assert T_PREPARE == 2
    frames = []
    for kind, uuid in gatt.UUID_BY_KIND.items():
        w = make_wearable(kind, "fuzz", 1)
        for _, u, f in list(w.frames_between(0, 5000))[:3]:
            frames.append(bytes([_UUIDS.index(u)]) + f)
        assert uuid in _UUIDS
    return {"wire": txs + [encode([1, "a", b"b", [None, True, -5, 2**40]])], "tx": txs,
            "block": [block.encode()], "consensus": msgs, "gatt": frames}
