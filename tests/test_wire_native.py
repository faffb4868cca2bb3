"""native/_wire.pyx against the pure-Python reference of node/wire/codec.py: for every input the two
accept the same values and refuse the same inputs, in both modes (canonical and not). The native
path only decides speed: what it refuses, the reference answers (and says why)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native as native_pkg
from node.wire import codec
from node.wire.codec import WireError, decode_canonical_py, decode_py, encode
from tests.test_wire import same

native = pytest.importorskip("native._wire")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.binary(max_size=300),
    st.text(max_size=40),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=20), max_leaves=60)


def agree(data: bytes, budget: int = -1) -> None:
    """The native decoder and the reference give the same value, or both refuse, in both modes; with
    a value budget, a native verdict of too many values is the reference's too (the codec does not
    run the reference after it)."""
    for canonical, reference in ((False, decode_py), (True, decode_canonical_py)):
        try:
            want = reference(data, len(data) + 1, budget)
        except WireError as exc:
            with pytest.raises((ValueError, native.TooManyValues)) as got_exc:
                native.decode(data, canonical, budget)
            if got_exc.type is native.TooManyValues:
                assert str(exc) == f"more than {budget} values", (data.hex(), canonical, exc)
            continue
        got = native.decode(data, canonical, budget)
        assert same(got, want), (data.hex(), canonical, got, want)


def _values_in(v: object) -> int:
    return 1 + sum(_values_in(x) for x in v) if isinstance(v, list) else 1


@given(values)
def test_a_value_budget_is_counted_alike_and_refused_alike(value: object) -> None:
    """Each scalar and each array counts one: the budget of exactly the value's count decodes it, one
    less is refused by both, with the same words (node/wire/codec.py decode's max_values)."""
    raw, n = encode(value), _values_in(value)
    agree(raw, n)
    agree(raw, n - 1)
    with pytest.raises(native.TooManyValues):
        native.decode(raw, True, n - 1)
    with pytest.raises(WireError, match=f"more than {n - 1} values"):
        codec.decode_canonical(raw, len(raw), n - 1)


@pytest.mark.skipif(native_pkg.forced_off(), reason="MEDCHAIN_NO_NATIVE=1 forces the reference")
def test_the_codec_uses_the_native_decoder() -> None:
    assert codec.BACKEND == "native"


def test_no_native_env_var_gives_the_reference_with_the_same_answers() -> None:
    code = ("from node.wire import codec\n"
            "print(codec.BACKEND, codec.decode_canonical(b'\\x92\\xc4\\x01x\\x05'))\n"
            "try:\n    codec.decode_canonical(b'\\x92\\xc4\\x01x\\xcc\\x05')\n"
            "except codec.WireError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "MEDCHAIN_NO_NATIVE"} | {"MEDCHAIN_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["python [b'x', 5]", "non-canonical msgpack encoding"]


@settings(max_examples=600, deadline=None)
@given(values)
def test_canonical_encodings_agree(value: object) -> None:
    agree(encode(value))


@settings(max_examples=600, deadline=None)
@given(values, st.data())
def test_mutated_encodings_agree(value: object, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        if raw and data.draw(st.booleans()):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        else:
            raw.insert(data.draw(st.integers(0, len(raw))), data.draw(st.integers(0, 255)))
    agree(bytes(raw))
    agree(bytes(raw), data.draw(st.integers(0, 70)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_agree(data: bytes) -> None:
    agree(data)


# every int and length format, at each edge of its range: the canonical mode takes only the width
# msgpack's packer picks; the plain mode takes any width that holds the value
_INT_FORMATS = [(0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
                (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")]
_EDGES = [0, 1, 31, 32, 33, 127, 128, 255, 256, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
          2**32, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize(("tag", "fmt"), _INT_FORMATS)
def test_every_int_width_at_its_edges(tag: int, fmt: str) -> None:
    for v in _EDGES + [-e for e in _EDGES]:
        try:
            raw = bytes((tag,)) + struct.pack(fmt, v)
        except struct.error:
            continue
        agree(raw)
        agree(b"\x91" + raw)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_every_length_width(n: int) -> None:
    blob, text, items = b"x" * n, "y" * n, [1] * n
    for raw in (msgpack.packb(blob, use_bin_type=True), msgpack.packb(text), msgpack.packb(items)):
        agree(raw)
    # the same values behind a header one size too wide: the plain mode takes them, the canonical not
    wide = [b"\xc6" + struct.pack(">I", n) + blob, b"\xdb" + struct.pack(">I", n) + text.encode(),
            b"\xdd" + struct.pack(">I", n) + b"\x01" * n]
    if n < 65536:
        wide += [b"\xc5" + struct.pack(">H", n) + blob, b"\xda" + struct.pack(">H", n) + text.encode(),
                 b"\xdc" + struct.pack(">H", n) + b"\x01" * n]
    if n < 256:
        wide.append(b"\xd9" + bytes((n,)) + text.encode())
    for raw in wide:
        agree(raw)


def test_the_nesting_limit_is_the_reference_one() -> None:
    for depth in range(6, 12):
        empty, full = [], [1]
        for _ in range(depth):
            empty, full = [empty], [full]
        agree(encode(empty))
        agree(encode(full))


@pytest.mark.parametrize("raw", [b"", b"\x80", b"\x81\x01\x02", b"\xca\x00\x00\x00\x00", b"\xcb" + bytes(8),
                                 b"\xd4\x01\x02", b"\xc7\x01\x05\x00", b"\xc1", b"\xa2\xff\xfe",
                                 b"\x92\x01", b"\x01\x02", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"])
def test_what_the_wire_refuses_both_refuse(raw: bytes) -> None:
    for canonical in (False, True):
        with pytest.raises(ValueError):
            native.decode(raw, canonical)
    with pytest.raises(WireError):
        codec.decode(raw)  # and the codec still says why: the reference's WireError
