"""Property-based tests (hypothesis) of the decoders' contract, over random bytes and over
structured values that get deep into each decoder: refuse only with the decoder's own error,
and re-encode exactly what was accepted."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.wearable import gatt
from node.crypto.keys import Identity
from node.tx import BREAK_GLASS_REASONS, Grant, Policy, Profile, Read, SealedKey, Tx, TxError, Write
from node.wire import encode
from tests.fuzz.http_target import ROUTES, HttpHarness
from tests.fuzz.targets import TARGETS, fuzz_block, fuzz_consensus, fuzz_gatt, fuzz_tx, fuzz_wire, seeds

SENDER = Identity.from_seed(b"prop")
CHAIN = "medchain-prop"

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6), max_leaves=30)
u32 = st.integers(0, 2**32 - 1)
u63 = st.integers(0, 2**63 - 1)
dtype = st.integers(1, 5)
addr = st.binary(min_size=32, max_size=32)
name = st.text(max_size=16)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    types = tuple(sorted(draw(st.sets(dtype, max_size=5))))
    keys = tuple(SealedKey(t, draw(u32), draw(st.binary(min_size=1, max_size=128))) for t in types) if types else ()
    return Grant(draw(addr), types, draw(u63), keys)


# a write's CID: a CIDv1, raw or dag-pb, of a sha2-256 digest (anything else does not parse)
cids = st.builds(lambda codec, digest: bytes((1, codec, 0x12, 0x20)) + digest, st.sampled_from([0x55, 0x70]),
                 st.binary(min_size=32, max_size=32))

bodies = st.one_of(
    grants(),
    st.builds(Profile, name, name, name, st.binary(min_size=32, max_size=32)),
    st.builds(Policy, st.booleans()),
    st.builds(Write, dtype, cids, st.integers(0, 1 << 40), u32, u63, u63)
    .filter(lambda w: w.t_end_ms >= w.t_start_ms),
    st.builds(Read, addr, dtype, st.binary(max_size=128), u63, u63, st.sampled_from(("", *BREAK_GLASS_REASONS)))
    .filter(lambda r: r.t_to_ms >= r.t_from_ms),
)


@pytest.mark.parametrize("name", sorted(TARGETS))
@given(data=st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_random_bytes(name: str, data: bytes) -> None:
    TARGETS[name](data)


@given(value=wire_values)
@settings(max_examples=300, deadline=None)
def test_structured_values(value: object) -> None:
    raw = encode(value)
    fuzz_wire(raw)
    fuzz_tx(raw)
    fuzz_block(raw)
    fuzz_consensus(raw)


@given(body=bodies, nonce=st.integers(1, 2**63 - 1))
@settings(max_examples=300, deadline=None)
def test_every_valid_body_round_trips(body: object, nonce: int) -> None:
    tx = Tx.build(SENDER, CHAIN, nonce, body)
    again = Tx.decode(tx.raw, CHAIN)
    assert again.body == body and again.raw == tx.raw
    fuzz_tx(tx.raw)


@given(body=bodies, pos=st.integers(0, 10_000), byte=st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_mutated_transactions(body: object, pos: int, byte: int) -> None:
    raw = bytearray(Tx.build(SENDER, CHAIN, 1, body).raw)
    raw[pos % len(raw)] = byte
    fuzz_tx(bytes(raw))
    try:  # and a mutated payload with a valid outer frame
        Tx.decode(bytes(raw), CHAIN)
    except (TxError, ValueError):
        pass


@pytest.mark.parametrize("name", ["block", "consensus", "gatt", "tx"])
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_mutated_seeds(name: str, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(seeds()[name])))
    for _ in range(data.draw(st.integers(1, 4))):
        seed[data.draw(st.integers(0, len(seed) - 1))] = data.draw(st.integers(0, 255))
    TARGETS[name](bytes(seed))


@given(uuid=st.sampled_from(sorted(gatt.KIND_BY_UUID)), frame=st.binary(max_size=40))
@settings(max_examples=500, deadline=None)
def test_gatt_frames(uuid: int, frame: bytes) -> None:
    fuzz_gatt(bytes([sorted(gatt.KIND_BY_UUID).index(uuid)]) + frame)


_harness: HttpHarness | None = None


@pytest.fixture(scope="module")
def http() -> HttpHarness:
    global _harness
    _harness = HttpHarness()
    yield _harness
    _harness.close()


@given(route=st.integers(0, len(ROUTES) - 1), shape=st.integers(0, 255),
       parts=st.lists(st.one_of(st.binary(max_size=24), st.sampled_from([b"\x01" + bytes([i]) for i in range(11)]),
                                st.sampled_from([b"\xc2\xb2", b"9" * 400, b"-1", b"latest", b"nan"])), max_size=8))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_http_routes(http: HttpHarness, route: int, shape: int, parts: list[bytes]) -> None:
    http.request(bytes([route, shape]) + b"\x00".join(parts))
