"""The wire decoder and the transaction parser, native (native/_wire.pyx) against the pure-Python
reference, on the payload of a data write as every validator decodes it for every transaction.

    .venv/bin/python -m pytest -q -p no:cacheprovider bench/test_bench_wire.py \\
        --benchmark-only --benchmark-columns=mean,median,rounds

Measured here (2026-12-06): a write's payload `decode_canonical` 2.8 us in the reference, 0.5 us
native; `Tx.decode` of the whole write 13.5 us before the fast paths, 6.6 us after (the
rest: the fields' checks, two objects, two SHA-256). The ratio is what to read: this VM drifts.
"""

from __future__ import annotations

import os

import pytest

from node.crypto.keys import Identity
from node.ipfs.cid import cid_v1_raw
from node.tx import Tx, Write
from node.wire import codec

_IDENT = Identity.from_seed(b"bench wire")
_BLOB = os.urandom(200)
_TX = Tx.build(_IDENT, "medchain-bench", 7, Write(1, cid_v1_raw(_BLOB).to_bytes(), len(_BLOB), 0,
                                                  1_700_000_000_000, 1_700_000_000_999))


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_decode_canonical_write_payload(benchmark, impl: str) -> None:
    if impl == "native" and codec.BACKEND != "native":
        pytest.skip("native/_wire.pyx is not built (or MEDCHAIN_NO_NATIVE=1)")
    fn = codec.decode_canonical if impl == "native" else codec.decode_canonical_py
    assert fn(_TX.payload) == codec.decode_canonical_py(_TX.payload)
    benchmark(fn, _TX.payload)


def test_tx_decode_write(benchmark) -> None:
    got = benchmark(Tx.decode, _TX.raw, "medchain-bench", False)
    assert got == _TX
