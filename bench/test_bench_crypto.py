"""Micro-benchmarks of the crypto hot paths: native batch vs the fallbacks, in one run.

Run with `make bench` (or `.venv/bin/python -m pytest bench --benchmark-only -q`); see
bench/README.md. Each benchmark round processes one whole batch; the summary printed at the end
(bench/conftest.py) turns that into items per second and a ratio against each group's baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys

import pytest

from node.crypto import aead, batch, ecdsa

try:
    from Crypto.Cipher import AES as _PyCryptodomeAES
except ImportError:  # optional: pip install -e .[bench]
    _PyCryptodomeAES = None

needs_native = pytest.mark.skipif(not batch.native_available(),
                                  reason=f"native extension not built: {batch.native_error()}")
needs_pycryptodome = pytest.mark.skipif(_PyCryptodomeAES is None,
                                        reason="pycryptodome not installed (pip install -e .[bench])")

@contextlib.contextmanager
def system_libsecp256k1():
    """native._secp on the libsecp256k1 it links (Debian's), instead of coincurve's, for a while."""
    secp = sys.modules["native._secp"]
    before = secp.library()
    secp.use_system_library()
    try:
        yield
    finally:
        if before == "coincurve":
            secp.use_coincurve_library()


VERIFY_BATCH = 4096
SIGNERS = 64  # repeat senders, as in a mempool: the native path's key cache gets hits


@pytest.fixture(scope="module")
def verify_items() -> list[tuple[bytes, bytes, bytes]]:
    items = []
    per = VERIFY_BATCH // SIGNERS
    for j in range(SIGNERS):
        sk = hashlib.sha256(b"bench signer %d" % j).digest()
        pk = ecdsa.public_key(sk)
        for i in range(per):
            d = hashlib.sha256(b"tx %d/%d" % (j, i)).digest()
            items.append((pk, d, ecdsa.sign(sk, d)))
    assert all(batch.verify_batch_fallback(items))
    return items


# --- ECDSA verify: native batch on all cores vs the coincurve loop ----------------------------


@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_coincurve_loop(benchmark, bench, verify_items):
    """The single path (coincurve via cffi, parsed keys cached) in a plain loop: one core."""
    out = bench(benchmark, lambda: [ecdsa.verify(pk, d, s) for pk, d, s in verify_items],
                items=len(verify_items), baseline=True)
    assert all(out)


@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_fallback_two_threads(benchmark, bench, verify_items):
    """The pure-Python fallback: coincurve on two threads (cffi releases the GIL)."""
    out = bench(benchmark, lambda: batch.verify_batch_fallback(verify_items), items=len(verify_items),
                fallback=True)
    assert all(out)


@needs_native
@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_native_all_cores(benchmark, bench, verify_items):
    out = bench(benchmark, lambda: batch.verify_batch_native(verify_items), items=len(verify_items))
    assert all(out)


@needs_native
@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_native_one_thread(benchmark, bench, verify_items):
    out = bench(benchmark, lambda: batch.verify_batch_native(verify_items, threads=1), items=len(verify_items))
    assert all(out)


@needs_native
@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_native_all_cores_system_lib(benchmark, bench, verify_items):
    """As test_verify_native_all_cores, over Debian's libsecp256k1 (the extension's fallback)."""
    with system_libsecp256k1():
        out = bench(benchmark, lambda: batch.verify_batch_native(verify_items), items=len(verify_items))
    assert all(out)


@needs_native
@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_native_one_thread_system_lib(benchmark, bench, verify_items):
    with system_libsecp256k1():
        out = bench(benchmark, lambda: batch.verify_batch_native(verify_items, threads=1),
                    items=len(verify_items))
    assert all(out)


@needs_native
@pytest.mark.benchmark(group=f"ecdsa verify, batch of {VERIFY_BATCH}")
def test_verify_native_all_cores_cold_key_cache(benchmark, bench, verify_items):
    """Every public key parsed again each round (cache cleared): the first batch from new senders."""
    import native._secp as secp

    def run():
        secp.cache_clear()
        return batch.verify_batch_native(verify_items)

    out = bench(benchmark, run, items=len(verify_items))
    assert all(out)


# --- ECDSA sign (load generator) --------------------------------------------------------------

SIGN_DIGESTS = [hashlib.sha256(b"reading %d" % i).digest() for i in range(4096)]
SIGN_KEY = hashlib.sha256(b"bench phone").digest()


@pytest.mark.benchmark(group="ecdsa sign, batch of 4096")
def test_sign_coincurve_loop(benchmark, bench):
    """The fallback: one coincurve PrivateKey, sign_recoverable per digest."""
    bench(benchmark, lambda: batch.sign_batch_fallback(SIGN_KEY, SIGN_DIGESTS), items=len(SIGN_DIGESTS),
          baseline=True, fallback=True)


@pytest.mark.benchmark(group="ecdsa sign, batch of 4096")
def test_sign_ecdsa_sign_loop(benchmark, bench):
    """ecdsa.sign per digest (libsecp256k1 called directly: no PrivateKey, no public key computed)."""
    bench(benchmark, lambda: [ecdsa.sign(SIGN_KEY, d) for d in SIGN_DIGESTS], items=len(SIGN_DIGESTS))


@needs_native
@pytest.mark.benchmark(group="ecdsa sign, batch of 4096")
def test_sign_native_all_cores(benchmark, bench):
    out = bench(benchmark, lambda: batch.sign_batch_native(SIGN_KEY, SIGN_DIGESTS), items=len(SIGN_DIGESTS))
    assert out[:8] == [ecdsa.sign(SIGN_KEY, d) for d in SIGN_DIGESTS[:8]]


@needs_native
@pytest.mark.benchmark(group="ecdsa sign, batch of 4096")
def test_sign_native_all_cores_system_lib(benchmark, bench):
    with system_libsecp256k1():
        out = bench(benchmark, lambda: batch.sign_batch_native(SIGN_KEY, SIGN_DIGESTS), items=len(SIGN_DIGESTS))
    assert out[:8] == [ecdsa.sign(SIGN_KEY, d) for d in SIGN_DIGESTS[:8]]


# --- AES-256-GCM seal: native batch vs cryptography vs pycryptodome (new cipher per message) --

KEY = hashlib.sha256(b"bench data key").digest()
AAD = b"patient|heart_rate|epoch 3|window 1700000000"
SIZES = {"64 B": (64, 4096), "1 KiB": (1024, 1024), "64 KiB": (65536, 64)}  # size, messages per batch


def _aes_items(size: int, count: int) -> list[tuple[bytes, bytes, bytes]]:
    return [(i.to_bytes(12, "big"), os.urandom(size), AAD) for i in range(count)]


def _pycryptodome_seal(key: bytes, items):
    out = []
    for nonce, pt, ad in items:
        cipher = _PyCryptodomeAES.new(key, _PyCryptodomeAES.MODE_GCM, nonce=nonce, mac_len=16)
        cipher.update(ad)
        ct, tag = cipher.encrypt_and_digest(pt)
        out.append(ct + tag)
    return out


@needs_pycryptodome
@pytest.mark.parametrize("label", list(SIZES))
def test_seal_pycryptodome_new_cipher_per_message(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    benchmark.group = f"aes-256-gcm seal, {label} x {count}"
    out = bench(benchmark, lambda: _pycryptodome_seal(KEY, items), items=count, baseline=True)
    assert out == aead.seal_batch(KEY, items)


@pytest.mark.parametrize("label", list(SIZES))
def test_seal_cryptography_fallback(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    benchmark.group = f"aes-256-gcm seal, {label} x {count}"
    # without pycryptodome the fallback is the baseline of its group
    bench(benchmark, lambda: batch.aead_seal_batch_fallback(KEY, items), items=count,
          baseline=_PyCryptodomeAES is None, fallback=True)


@needs_native
@pytest.mark.parametrize("label", list(SIZES))
def test_seal_native_batch(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    benchmark.group = f"aes-256-gcm seal, {label} x {count}"
    out = bench(benchmark, lambda: batch.aead_seal_batch_native(KEY, items), items=count)
    assert out == aead.seal_batch(KEY, items)


@needs_native
@pytest.mark.parametrize("label", list(SIZES))
def test_seal_native_batch_one_thread(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    benchmark.group = f"aes-256-gcm seal, {label} x {count}"
    bench(benchmark, lambda: batch.aead_seal_batch_native(KEY, items, threads=1), items=count)


# --- AES-256-GCM open ---------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["64 B", "1 KiB"])
def test_open_cryptography_fallback(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    sealed = [(n, c, a) for (n, _, a), c in zip(items, aead.seal_batch(KEY, items), strict=True)]
    benchmark.group = f"aes-256-gcm open, {label} x {count}"
    out = bench(benchmark, lambda: batch.aead_open_batch_fallback(KEY, sealed), items=count,
                baseline=True, fallback=True)
    assert None not in out


@needs_native
@pytest.mark.parametrize("label", ["64 B", "1 KiB"])
def test_open_native_batch(benchmark, bench, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    sealed = [(n, c, a) for (n, _, a), c in zip(items, aead.seal_batch(KEY, items), strict=True)]
    benchmark.group = f"aes-256-gcm open, {label} x {count}"
    out = bench(benchmark, lambda: batch.aead_open_batch_native(KEY, sealed), items=count)
    assert out == [p for _, p, _ in items]


# --- paired A/B ratios: the goals of the issue, measured back to back ---------------------------


@needs_native
@pytest.mark.benchmark(group="paired A/B (time of one A+B pair)")
def test_paired_verify_native_vs_coincurve_loop(benchmark, paired, verify_items):
    ratios = paired(benchmark, f"ecdsa verify {VERIFY_BATCH}: native all cores vs coincurve loop (goal >= 1.8x)",
                    lambda: batch.verify_batch_native(verify_items),
                    lambda: [ecdsa.verify(pk, d, s) for pk, d, s in verify_items], rounds=20)
    assert ratios


@needs_native
@pytest.mark.benchmark(group="paired A/B (time of one A+B pair)")
def test_paired_verify_native_one_thread_vs_coincurve_loop(benchmark, paired, verify_items):
    ratios = paired(benchmark, f"ecdsa verify {VERIFY_BATCH}: native 1 thread vs coincurve loop (per core)",
                    lambda: batch.verify_batch_native(verify_items, threads=1),
                    lambda: [ecdsa.verify(pk, d, s) for pk, d, s in verify_items], rounds=20)
    assert ratios


@needs_native
@pytest.mark.benchmark(group="paired A/B (time of one A+B pair)")
def test_paired_verify_native_vs_fallback(benchmark, paired, verify_items):
    ratios = paired(benchmark, f"ecdsa verify {VERIFY_BATCH}: native all cores vs fallback (coincurve, 2 threads)",
                    lambda: batch.verify_batch_native(verify_items),
                    lambda: batch.verify_batch_fallback(verify_items), rounds=20)
    assert ratios


@needs_native
@needs_pycryptodome
@pytest.mark.benchmark(group="paired A/B (time of one A+B pair)")
def test_paired_seal_64b_native_vs_pycryptodome(benchmark, paired):
    items = _aes_items(64, 4096)
    ratios = paired(benchmark, "aes-256-gcm seal 64 B x 4096: native vs pycryptodome new cipher (goal >= 50x)",
                    lambda: batch.aead_seal_batch_native(KEY, items),
                    lambda: _pycryptodome_seal(KEY, items), rounds=8)
    assert ratios


@needs_native
@pytest.mark.parametrize("label", list(SIZES))
@pytest.mark.benchmark(group="paired A/B (time of one A+B pair)")
def test_paired_seal_native_vs_cryptography(benchmark, paired, label):
    size, count = SIZES[label]
    items = _aes_items(size, count)
    ratios = paired(benchmark, f"aes-256-gcm seal {label} x {count}: native vs cryptography fallback",
                    lambda: batch.aead_seal_batch_native(KEY, items),
                    lambda: batch.aead_seal_batch_fallback(KEY, items), rounds=60)
    assert ratios
