"""Native batch crypto (native/_secp.pyx, native/_aesgcm.pyx) against the fallbacks and Wycheproof.

Every verification and AEAD path (native batch, native single-item batch, fallback batch, the
single-item functions of node/crypto) must agree with the published vectors and with each other
on random and malformed inputs; big batches must not leak; forking after a native call must work.
The native ECDSA paths run over both libsecp256k1 builds: coincurve's (the default) and the
system one the extension links (its fallback).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from coincurve import PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.crypto import aead, batch, ecdsa
from node.crypto.aead import AeadError
from tests.conftest import vector_file

ROOT = Path(__file__).resolve().parents[1]
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 group order

needs_native = pytest.mark.skipif(
    not batch.native_available(),
    reason=f"native extension not built ({batch.native_error() or 'import failed'}); "
    "run `pip install --no-build-isolation -e .` with Cython, gcc, libsecp256k1-dev, libssl-dev",
)

HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _secp():
    return sys.modules["native._secp"]


def _on_system_lib(fn):
    """fn run with native._secp switched to the system libsecp256k1, then switched back."""

    def run(*args, **kwargs):
        secp = _secp()
        before = secp.library()
        secp.use_system_library()
        try:
            return fn(*args, **kwargs)
        finally:
            if before == "coincurve":
                secp.use_coincurve_library()

    return run


# --- the paths under test -------------------------------------------------------------------


def _verify_paths() -> dict:
    paths = {
        "fallback batch": batch.verify_batch_fallback,
        "ecdsa.verify single": lambda items: [ecdsa.verify(*it) for it in items],
    }
    if batch.native_available():
        paths["native batch"] = batch.verify_batch_native
        paths["native batch 1 thread"] = lambda items: batch.verify_batch_native(items, threads=1)
        paths["native single"] = lambda items: [batch.verify_batch_native([it])[0] for it in items]
        paths["native batch, system libsecp256k1"] = _on_system_lib(batch.verify_batch_native)
        paths["native batch 1 thread, system libsecp256k1"] = _on_system_lib(
            lambda items: batch.verify_batch_native(items, threads=1))
    return paths


def _seal_paths() -> dict:
    paths = {"fallback batch": batch.aead_seal_batch_fallback,
             "aead.seal single": lambda key, items: [aead.seal(key, *it) for it in items]}
    if batch.native_available():
        paths["native batch"] = batch.aead_seal_batch_native
        paths["native batch 2 threads"] = lambda key, items: batch.aead_seal_batch_native(key, items, threads=2)
        paths["native single"] = lambda key, items: [batch.aead_seal_batch_native(key, [it])[0] for it in items]
    return paths


def _open_paths() -> dict:
    def single_open(key, items):
        out = []
        for nonce, ct, ad in items:
            try:
                out.append(aead.open_(key, nonce, ct, ad))
            except AeadError as exc:
                if "nonce size" in str(exc) or "key size" in str(exc):
                    raise
                out.append(None)
        return out

    paths = {"fallback batch": batch.aead_open_batch_fallback, "aead.open_ single": single_open}
    if batch.native_available():
        paths["native batch"] = batch.aead_open_batch_native
        paths["native batch 2 threads"] = lambda key, items: batch.aead_open_batch_native(key, items, threads=2)
        paths["native single"] = lambda key, items: [batch.aead_open_batch_native(key, [it])[0] for it in items]
    return paths


# --- Wycheproof ECDSA -----------------------------------------------------------------------


def der_to_compact(der: bytes) -> bytes | None:
    """Strict DER ECDSA-Sig-Value -> r || s (32 bytes each); None for anything not strict DER."""
    if len(der) < 8 or der[0] != 0x30 or der[1] & 0x80 or der[1] != len(der) - 2:
        return None  # not a SEQUENCE, long-form (never minimal here) or wrong length
    pos, ints = 2, []
    for _ in range(2):
        if pos + 2 > len(der) or der[pos] != 0x02:
            return None  # not an INTEGER
        ln = der[pos + 1]
        pos += 2
        if ln == 0 or ln & 0x80 or pos + ln > len(der):
            return None
        v = der[pos : pos + ln]
        if v[0] & 0x80:
            return None  # negative
        if ln > 1 and v[0] == 0 and not v[1] & 0x80:
            return None  # non-minimal leading zero
        ints.append(int.from_bytes(v, "big"))
        pos += ln
    if pos != len(der):
        return None  # trailing bytes
    r, s = ints
    if r >> 256 or s >> 256:
        return None  # does not fit the compact form (and is >= n anyway)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _compress(uncompressed: bytes) -> bytes:
    assert len(uncompressed) == 65 and uncompressed[0] == 4
    return bytes([2 + (uncompressed[64] & 1)]) + uncompressed[1:33]


def _ecdsa_cases() -> tuple[list, list]:
    """(strict cases as (tcId, (pk, digest, sig), expected), ids of non-strict-DER cases)."""
    data = json.loads(vector_file("wycheproof_ecdsa_secp256k1_sha256_bitcoin_test.json").read_text())
    strict, loose = [], []
    for group in data["testGroups"]:
        assert group["sha"] == "SHA-256"
        pk = _compress(bytes.fromhex(group["publicKey"]["uncompressed"]))
        for t in group["tests"]:
            assert t["result"] in ("valid", "invalid"), t
            digest = hashlib.sha256(bytes.fromhex(t["msg"])).digest()
            sig = der_to_compact(bytes.fromhex(t["sig"]))
            if sig is None:
                loose.append((t["tcId"], t["result"]))
            else:
                strict.append((t["tcId"], (pk, digest, sig), t["result"] == "valid"))
    return strict, loose


def test_wycheproof_ecdsa_vectors_are_all_used():
    strict, loose = _ecdsa_cases()
    assert len(strict) + len(loose) == 463
    # a signature that is not strict DER has no compact form: Wycheproof calls every one invalid
    assert all(result == "invalid" for _, result in loose), loose
    assert sum(expected for *_, expected in strict) == 162  # every valid case is strict DER


@pytest.mark.parametrize("path", list(_verify_paths()))
def test_wycheproof_ecdsa(path):
    strict, _ = _ecdsa_cases()
    got = _verify_paths()[path]([item for _, item, _ in strict])
    wrong = [tc for (tc, _, expected), g in zip(strict, got, strict=True) if g is not expected]
    assert not wrong, f"{path}: tcIds {wrong} disagree with Wycheproof"
    assert all(type(g) is bool for g in got)


def test_wycheproof_ecdsa_high_s_variant_of_each_valid_case_is_rejected():
    strict, _ = _ecdsa_cases()
    high = []
    for _, (pk, d, sig), expected in strict:
        if expected:
            s = int.from_bytes(sig[32:], "big")
            high.append((pk, d, sig[:32] + (N - s).to_bytes(32, "big")))
    for name, fn in _verify_paths().items():
        assert fn(high) == [False] * len(high), name


# --- Wycheproof AES-GCM ---------------------------------------------------------------------


def _aes_cases() -> tuple[list, list]:
    data = json.loads(vector_file("wycheproof_aes_gcm_test.json").read_text())
    supported, unsupported = [], []
    for group in data["testGroups"]:
        for t in group["tests"]:
            case = {
                "tcId": t["tcId"],
                "key": bytes.fromhex(t["key"]),
                "iv": bytes.fromhex(t["iv"]),
                "aad": bytes.fromhex(t["aad"]),
                "msg": bytes.fromhex(t["msg"]),
                "sealed": bytes.fromhex(t["ct"]) + bytes.fromhex(t["tag"]),
                "valid": t["result"] == "valid",
            }
            ok = group["ivSize"] == 96 and group["tagSize"] == 128 and group["keySize"] in (128, 192, 256)
            (supported if ok else unsupported).append(case)
    return supported, unsupported


def _by_key(cases: list) -> dict[bytes, list]:
    groups: dict[bytes, list] = {}
    for c in cases:
        groups.setdefault(c["key"], []).append(c)
    return groups


def test_wycheproof_aes_gcm_vectors_are_all_used():
    supported, unsupported = _aes_cases()
    assert len(supported) + len(unsupported) == 316
    assert len(supported) > 150 and {len(c["key"]) for c in supported} == {16, 24, 32}
    assert {len(c["iv"]) for c in unsupported} and 12 not in {len(c["iv"]) for c in unsupported}


@pytest.mark.parametrize("path", list(_seal_paths()))
def test_wycheproof_aes_gcm_seal(path):
    supported, _ = _aes_cases()
    seal = _seal_paths()[path]
    for key, cases in _by_key(supported).items():
        got = seal(key, [(c["iv"], c["msg"], c["aad"]) for c in cases])
        for c, g in zip(cases, got, strict=True):
            # valid: exactly the published ciphertext and tag; invalid (modified tag or
            # ciphertext): our correct encryption differs from the published bytes
            assert (g == c["sealed"]) is c["valid"], (path, c["tcId"])


@pytest.mark.parametrize("path", list(_open_paths()))
def test_wycheproof_aes_gcm_open(path):
    supported, _ = _aes_cases()
    open_ = _open_paths()[path]
    for key, cases in _by_key(supported).items():
        got = open_(key, [(c["iv"], c["sealed"], c["aad"]) for c in cases])
        for c, g in zip(cases, got, strict=True):
            assert g == (c["msg"] if c["valid"] else None), (path, c["tcId"])


@pytest.mark.parametrize("path", sorted(set(_seal_paths()) | set(_open_paths())))
def test_wycheproof_aes_gcm_unsupported_sizes_raise_clear_error(path):
    _, unsupported = _aes_cases()
    assert unsupported
    for c in unsupported:
        for paths, item in ((_seal_paths(), (c["iv"], c["msg"], c["aad"])),
                            (_open_paths(), (c["iv"], c["sealed"], c["aad"]))):
            if path not in paths:
                continue
            with pytest.raises(AeadError, match=rf"unsupported nonce size {len(c['iv'])} bytes \(only 12\)"):
                paths[path](c["key"], [item])


# --- differential tests: native vs fallback on random inputs -----------------------------------

secret_keys = st.integers(min_value=1, max_value=N - 1).map(lambda k: k.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)
MODES = ["valid", "sig bit", "digest bit", "random pubkey", "high-S", "zero sig", "r >= n", "other key",
         "short sig", "long digest", "pubkey prefix", "random sig"]


@st.composite
def verify_items(draw):
    sk, d = draw(secret_keys), draw(digests)
    pk = ecdsa.public_key(sk)
    sig = ecdsa.sign(sk, d)
    mode = draw(st.sampled_from(MODES))
    bit = draw(st.integers(0, 255))
    if mode == "sig bit":
        i = draw(st.integers(0, 511))
        sig = bytes(b ^ (1 << (i % 8)) if j == i // 8 else b for j, b in enumerate(sig))
    elif mode == "digest bit":
        d = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(d))
    elif mode == "random pubkey":
        pk = bytes([draw(st.sampled_from([2, 3, 4, 0, 5]))]) + draw(st.binary(min_size=32, max_size=32))
    elif mode == "high-S":
        s = int.from_bytes(sig[32:], "big")
        sig = sig[:32] + (N - s).to_bytes(32, "big")
    elif mode == "zero sig":
        sig = draw(st.sampled_from([bytes(64), bytes(32) + sig[32:], sig[:32] + bytes(32)]))
    elif mode == "r >= n":
        r = N + draw(st.integers(0, 2**256 - 1 - N))
        sig = r.to_bytes(32, "big") + sig[32:]
    elif mode == "other key":
        pk = ecdsa.public_key(draw(secret_keys.filter(lambda k: k != sk)))
    elif mode == "short sig":
        sig = sig[: draw(st.integers(0, 63))]
    elif mode == "long digest":
        d = d + draw(st.binary(min_size=1, max_size=3))
    elif mode == "pubkey prefix":
        pk = bytes([pk[0] ^ 1]) + pk[1:]  # the other point with this x: a valid key, wrong signer
    elif mode == "random sig":
        sig = draw(st.binary(min_size=64, max_size=64))
    return mode, (pk, d, sig)


@needs_native
@HYP
@given(st.lists(verify_items(), min_size=1, max_size=80))
def test_differential_verify(cases):
    items = [item for _, item in cases]
    results = {name: fn(items) for name, fn in _verify_paths().items()}
    reference = results["fallback batch"]
    for name, got in results.items():
        assert got == reference, name
    for (mode, _), ok in zip(cases, reference, strict=True):
        if mode == "valid":
            assert ok
        elif mode in ("high-S", "zero sig", "r >= n", "short sig", "long digest", "other key", "sig bit"):
            assert not ok, mode


@needs_native
@HYP
@given(secret_keys, st.lists(digests, max_size=40))
def test_sign_batch_matches_coincurve_byte_for_byte(sk, ds):
    want = [PrivateKey(sk).sign_recoverable(d, hasher=None)[:64] for d in ds]
    assert batch.sign_batch_native(sk, ds) == want
    assert batch.sign_batch_native(sk, ds, threads=2) == want
    assert _on_system_lib(batch.sign_batch_native)(sk, ds, threads=2) == want
    assert batch.sign_batch_fallback(sk, ds) == want
    assert [ecdsa.sign(sk, d) for d in ds] == want
    pk = ecdsa.public_key(sk)
    assert all(int.from_bytes(s[32:], "big") <= N // 2 for s in want)  # low-S
    assert batch.verify_batch_native([(pk, d, s) for d, s in zip(ds, want, strict=True)]) == [True] * len(ds)


@needs_native
def test_sign_batch_large_matches_coincurve():
    sk = hashlib.sha256(b"loadgen device").digest()
    ds = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(3000)]
    key = PrivateKey(sk)
    assert batch.sign_batch(sk, ds) == [key.sign_recoverable(d, hasher=None)[:64] for d in ds]


aes_keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
aes_items = st.tuples(st.binary(min_size=12, max_size=12), st.binary(max_size=300), st.binary(max_size=40))


@needs_native
@HYP
@given(aes_keys, st.lists(aes_items, max_size=40), st.data())
def test_differential_aes_gcm(key, items, data):
    sealed = {name: fn(key, items) for name, fn in _seal_paths().items()}
    reference = sealed["fallback batch"]
    for name, got in sealed.items():
        assert got == reference, name
    # open the sealed items, some of them tampered with (ciphertext, tag, nonce or aad)
    opens, expect = [], []
    for (nonce, pt, ad), ct in zip(items, reference, strict=True):
        how = data.draw(st.sampled_from(["ok", "ct", "tag", "nonce", "aad", "truncate"]))
        if how == "ct" and len(ct) > 16:
            i = data.draw(st.integers(0, len(ct) - 17))
            ct = ct[:i] + bytes([ct[i] ^ 1]) + ct[i + 1 :]
        elif how == "tag":
            ct = ct[:-1] + bytes([ct[-1] ^ 0x80])
        elif how == "nonce":
            nonce = bytes([nonce[0] ^ 1]) + nonce[1:]
        elif how == "aad":
            ad = ad + b"x"
        elif how == "truncate":
            ct = ct[: data.draw(st.integers(0, len(ct) - 1))]
        else:
            how = "ok"
        opens.append((nonce, ct, ad))
        expect.append(pt if how == "ok" else None)
    for name, fn in _open_paths().items():
        assert fn(key, opens) == expect, name


# --- malformed inputs ------------------------------------------------------------------------


def _valid_triple() -> tuple[bytes, bytes, bytes]:
    sk = hashlib.sha256(b"malformed").digest()
    d = hashlib.sha256(b"x").digest()
    return ecdsa.public_key(sk), d, ecdsa.sign(sk, d)


def _malformed_verify_items() -> list:
    pk, d, sig = _valid_triple()
    return [
        (pk, d, sig),  # the one valid item
        (pk, d, bytes(64)),  # zero signature
        (pk, d, sig[:63]),
        (pk, d, sig + b"\0"),
        (pk, d[:31], sig),
        (pk, d + b"\0", sig),
        (pk[:32], d, sig),
        (b"\x04" + pk[1:], d, sig),  # 33 bytes with an uncompressed prefix
        (b"\x02" + bytes(32), d, sig),  # x = 0 is not on the curve
        (b"\x02" + b"\xff" * 32, d, sig),  # x >= p
        (b"", b"", b""),
        (pk, d),
        (pk, d, sig, b"extra"),
        None,
        42,
        b"not a triple",
        "abc",
        (None, d, sig),
        (pk.hex(), d, sig),
        (pk, d, 12345),
        (bytearray(pk), bytearray(d), memoryview(sig)),  # bytes-like: accepted (valid)
        [pk, d, sig],  # a list instead of a tuple: accepted (valid)
    ]


@pytest.mark.parametrize("path", list(_verify_paths()))
def test_malformed_verify_items_are_false_never_a_crash(path):
    items = _malformed_verify_items()
    if path == "ecdsa.verify single":
        pytest.skip("the single-item function takes bytes only; malformed input is the batch API's job")
    got = _verify_paths()[path](items)
    want = [True] + [False] * (len(items) - 3) + [True, True]
    assert got == want


def test_public_verify_batch_on_malformed_input_and_empty():
    assert batch.verify_batch([]) == []
    items = _malformed_verify_items()
    assert batch.verify_batch(items) == batch.verify_batch_fallback(items)


@needs_native
@pytest.mark.parametrize("fn", [batch.sign_batch_native, batch.sign_batch_fallback,
                                _on_system_lib(batch.sign_batch_native)])
def test_sign_batch_rejects_bad_input_before_signing(fn):
    d = bytes(32)
    with pytest.raises(ValueError, match="secret key must be 32 bytes"):
        fn(b"\x01" * 31, [d])
    for bad in (bytes(32), N.to_bytes(32, "big"), b"\xff" * 32):
        with pytest.raises(ValueError, match="invalid secret key"):
            fn(bad, [d])
    with pytest.raises(ValueError, match="digest 1 must be 32 bytes"):
        fn(b"\x01" * 32, [d, b"short", d])
    with pytest.raises(TypeError):
        fn(b"\x01" * 32, [d, None])
    assert fn(b"\x01" * 32, []) == []


@pytest.mark.parametrize("kind", ["seal", "open"])
def test_aead_bad_parameters_raise_aead_error_on_every_path(kind):
    paths = _seal_paths() if kind == "seal" else _open_paths()
    good = (bytes(12), bytes(40), b"")
    for name, fn in paths.items():
        for bad_key in (b"", bytes(15), bytes(33), bytes(64)):
            with pytest.raises(AeadError, match="unsupported AES key size"):
                fn(bad_key, [good])
        for bad_nonce in (b"", bytes(8), bytes(11), bytes(13), bytes(16)):
            with pytest.raises(AeadError, match=f"unsupported nonce size {len(bad_nonce)} bytes"):
                fn(bytes(32), [good, (bad_nonce, bytes(40), b"")])
        with pytest.raises(TypeError):
            fn(bytes(32), [(bytes(12), None, b"")])
        if "batch" in name:
            with pytest.raises(AeadError, match="unsupported AES key size"):
                fn(bytes(7), [])  # the key is checked even for an empty batch
            assert fn(bytes(32), []) == []


def test_aead_open_short_and_empty_ciphertexts():
    key = bytes(range(32))
    empty = aead.seal(key, bytes(12), b"", b"ad")
    assert len(empty) == 16
    items = [(bytes(12), b"", b"ad"), (bytes(12), empty[:15], b"ad"), (bytes(12), empty, b"ad"),
             (bytes(12), empty, b"other ad")]
    want = [None, None, b"", None]
    for name, fn in _open_paths().items():
        assert fn(key, items) == want, name
    assert batch.aead_open_batch(key, items) == want


def test_aead_bytes_like_inputs_match():
    key = bytes(range(32))
    items = [(bytearray(12), memoryview(b"hello"), bytearray(b"ad")), (bytes(12), b"x" * 1000, None)]
    want = aead.seal_batch(key, items)
    for name, fn in _seal_paths().items():
        if "single" in name:
            continue
        assert fn(key, items) == want, name
        assert fn(bytearray(key), items) == want, name


# --- large batches: no leaks -----------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_native
def test_100k_verify_batch_no_leak():
    # 1,000 valid signatures from 50 keys, plus 99,000 items from 40,000 other keys with
    # signatures that do not verify: every item costs a full verification, and the parsed-key
    # cache sees more keys than one generation holds, so eviction runs too.
    signers = [hashlib.sha256(b"signer %d" % i).digest() for i in range(50)]
    good = []
    for j, sk in enumerate(signers):
        ds = [hashlib.sha256(b"%d/%d" % (j, i)).digest() for i in range(20)]
        pk = ecdsa.public_key(sk)
        good += [(pk, d, s) for d, s in zip(ds, batch.sign_batch_native(sk, ds), strict=True)]
    others = [ecdsa.public_key(hashlib.sha256(b"other %d" % i).digest()) for i in range(40_000)]
    _, d0, s0 = good[0]
    items = good + [(others[i % len(others)], d0, s0) for i in range(99_000)]
    assert len(items) == 100_000
    expected = [True] * 1000 + [False] * 99_000

    assert batch.verify_batch_native(items) == expected  # warm up: allocator, cache
    before = _rss()
    assert batch.verify_batch_native(items) == expected
    growth = _rss() - before
    entries, capacity = sys.modules["native._secp"].cache_info()
    assert entries <= capacity
    assert growth < 50 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB on the second 100k batch"


@needs_native
def test_100k_aes_gcm_and_sign_batches_no_leak():
    key = bytes(range(32))
    items = [(i.to_bytes(12, "big"), i.to_bytes(8, "big") * 8, b"ad") for i in range(100_000)]
    digests = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(20_000)]
    sk = hashlib.sha256(b"leak").digest()

    def once():
        sealed = batch.aead_seal_batch_native(key, items)
        opened = batch.aead_open_batch_native(key, [(n, c, a) for (n, _, a), c in zip(items, sealed, strict=True)])
        assert opened == [p for _, p, _ in items]
        tampered = batch.aead_open_batch_native(key, [(n, c[:-1] + b"\0", a) for (n, _, a), c in zip(items, sealed, strict=True)])
        assert tampered.count(None) >= 99_000
        assert len(batch.sign_batch_native(sk, digests)) == 20_000

    once()
    before = _rss()
    once()
    growth = _rss() - before
    assert growth < 50 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB on the second run"


# --- concurrency and fork safety -------------------------------------------------------------


@needs_native
def test_concurrent_calls_from_python_threads():
    sets = []
    for t in range(4):
        sk = hashlib.sha256(b"thread %d" % t).digest()
        ds = [hashlib.sha256(b"%d-%d" % (t, i)).digest() for i in range(300)]
        pk = ecdsa.public_key(sk)
        sigs = batch.sign_batch_native(sk, ds)
        sets.append([(pk, d, s) for d, s in zip(ds, sigs, strict=True)] + [(pk, d, sigs[0]) for d in ds[1:50]])
    expected = [[True] * 300 + [False] * 49] * 4
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(5):
                assert batch.verify_batch_native(sets[i]) == expected[i]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors


def _child_uses_native(q):
    sk = hashlib.sha256(b"fork").digest()
    ds = [hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(200)]
    pk = ecdsa.public_key(sk)
    sigs = batch.sign_batch_native(sk, ds, threads=2)
    ok = batch.verify_batch_native([(pk, d, s) for d, s in zip(ds, sigs, strict=True)], threads=2)
    big = [(bytes(12), bytes(65536), b"")] * 32
    q.put(all(ok) and batch.aead_seal_batch_native(bytes(32), big, threads=2) == aead.seal_batch(bytes(32), big))


@needs_native
def test_fork_after_parallel_native_call_does_not_hang():
    # OpenMP (libgomp) would hang here: its thread pool does not survive fork()
    sk = hashlib.sha256(b"parent").digest()
    ds = [hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(200)]
    batch.sign_batch_native(sk, ds, threads=2)
    batch.aead_seal_batch_native(bytes(32), [(bytes(12), bytes(65536), b"")] * 32, threads=2)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_uses_native, args=(q,))
    p.start()
    p.join(30)
    if p.is_alive():
        p.kill()
        pytest.fail("child forked after a native parallel call hung")
    assert p.exitcode == 0 and q.get(timeout=5) is True


# --- which libsecp256k1 build ----------------------------------------------------------------


@needs_native
def test_native_uses_coincurves_libsecp256k1_by_default():
    assert batch.SECP_LIBRARY_ERROR == ""
    assert batch.secp_library() == _secp().library() == "coincurve"
    assert "coincurve" in batch.backend_name() and "libsecp256k1" in batch.backend_name()


def _coincurve_addresses() -> dict[str, int]:
    from coincurve._libsecp256k1 import ffi, lib

    return {n: int(ffi.cast("uintptr_t", ffi.addressof(lib, n))) for n in _secp().FUNCTIONS}


@needs_native
def test_init_from_coincurve_rejects_bad_arguments_and_keeps_the_library():
    secp = _secp()
    good = _coincurve_addresses()
    before = secp.library()
    with pytest.raises(ValueError, match="struct sizes"):
        secp.init_from_coincurve(good, 96, 64)
    with pytest.raises(ValueError, match="no address for secp256k1_ecdsa_verify"):
        secp.init_from_coincurve({k: v for k, v in good.items() if k != "secp256k1_ecdsa_verify"}, 64, 64)
    with pytest.raises(ValueError, match="bad address"):
        secp.init_from_coincurve(good | {"secp256k1_ecdsa_sign": 0}, 64, 64)
    with pytest.raises(RuntimeError, match="other addresses"):  # e.g. Debian's functions, once coincurve's are in
        secp.init_from_coincurve(good | {"secp256k1_ecdsa_verify": good["secp256k1_ecdsa_verify"] + 16}, 64, 64)
    assert secp.library() == before
    secp.init_from_coincurve(good, 64, 64)  # the same addresses again: selects the same build
    assert secp.library() == "coincurve"


@needs_native
def test_switching_library_clears_the_key_cache_and_gives_the_same_results():
    secp = _secp()
    sk = hashlib.sha256(b"switch").digest()
    ds = [hashlib.sha256(b"s%d" % i).digest() for i in range(40)]
    pk = ecdsa.public_key(sk)
    items = [(pk, d, s) for d, s in zip(ds, batch.sign_batch_native(sk, ds), strict=True)]
    items += [(pk, ds[0], items[1][2])]
    want = [True] * 40 + [False]
    assert batch.verify_batch_native(items) == want
    assert secp.cache_info()[0] >= 1
    try:
        secp.use_system_library()
        assert secp.library() == "system" and secp.cache_info()[0] == 0
        assert batch.verify_batch_native(items) == want
    finally:
        secp.use_coincurve_library()
    assert secp.library() == "coincurve" and secp.cache_info()[0] == 0
    assert batch.verify_batch_native(items) == want


@needs_native
def test_switching_library_while_other_threads_verify_and_sign():
    # every call keeps the build it started with; keys parsed by one build never reach a call on
    # the other through the cache
    secp = _secp()
    sk = hashlib.sha256(b"switch threads").digest()
    ds = [hashlib.sha256(b"t%d" % i).digest() for i in range(64)]
    sigs = batch.sign_batch_native(sk, ds)
    others = [ecdsa.public_key(hashlib.sha256(b"o%d" % i).digest()) for i in range(64)]
    pk = ecdsa.public_key(sk)
    items = [(pk, d, s) for d, s in zip(ds, sigs, strict=True)] + [(o, ds[0], sigs[0]) for o in others]
    want = [True] * 64 + [False] * 64
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0, 0]

    def work(t):
        try:
            while not stop.is_set():
                assert batch.verify_batch_native(items, threads=2) == want
                assert batch.sign_batch_native(sk, ds[:20], threads=2) == sigs[:20]
                calls[t] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    try:
        for i in range(200):
            secp.use_system_library() if i % 2 == 0 else secp.use_coincurve_library()
            time.sleep(0.002)  # mid-call for the workers, mostly
    finally:
        stop.set()
        for th in threads:
            th.join(60)
        secp.use_coincurve_library()
    assert not errors, errors
    assert min(calls) >= 5, calls


@needs_native
def test_falls_back_to_the_system_libsecp256k1_when_coincurves_is_unusable():
    code = (
        "import coincurve._libsecp256k1 as cc\n"
        "from node.crypto import ecdsa  # the reference signer keeps coincurve's (ecdsa.sign calls it)\n"
        "cc.ffi = None  # no cffi module for the batch module to take addresses from\n"
        "import hashlib\n"
        "from node.crypto import batch\n"
        "print(batch.secp_library()); print(batch.backend_name())\n"
        "sk = hashlib.sha256(b'fallback lib').digest(); pk = ecdsa.public_key(sk)\n"
        "ds = [hashlib.sha256(bytes([i])).digest() for i in range(40)]\n"
        "sigs = batch.sign_batch_native(sk, ds, threads=2)\n"
        "print(sigs == [ecdsa.sign(sk, d) for d in ds])\n"
        "print(batch.verify_batch_native([(pk, d, s) for d, s in zip(ds, sigs)] + [(pk, ds[0], sigs[1])]) "
        "== [True] * 40 + [False])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDCHAIN_NO_NATIVE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "system", out
    assert lines[1].startswith("native (system libsecp256k1 [coincurve's unusable: AttributeError"), lines[1]
    assert lines[2:] == ["True", "True"]
    assert "native ECDSA keeps the system libsecp256k1" in out.stderr


# --- dispatch --------------------------------------------------------------------------------


def _probe(env_extra: dict) -> list[str]:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from node.crypto import batch\n"
        "print(batch.NATIVE); print(batch.backend_name())\n"
        "batch.verify_batch([]); batch.verify_batch([])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDCHAIN_NO_NATIVE"} | env_extra
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.splitlines() + out.stderr.splitlines()


@needs_native
def test_native_is_used_by_default_and_logged_once():
    lines = _probe({})
    assert lines[0] == "True" and lines[1].startswith("native (coincurve ")
    assert sum("medchain: native crypto in use" in line for line in lines) == 1


def test_env_var_forces_fallback_and_logs_it():
    lines = _probe({"MEDCHAIN_NO_NATIVE": "1"})
    assert lines[0] == "False" and lines[1].startswith("fallback") and "MEDCHAIN_NO_NATIVE" in lines[1]
    assert sum("medchain: fallback crypto in use" in line for line in lines) == 1


def _fallbacks_used(monkeypatch) -> set[str]:
    """Which fallback paths a batch verify and a batch seal take, observed by spying on them."""
    used: set[str] = set()
    for name in ("verify_batch_fallback", "aead_seal_batch_fallback"):
        real = getattr(batch, name)
        monkeypatch.setattr(batch, name, lambda *a, _n=name, _r=real: used.add(_n) or _r(*a))
    sk = hashlib.sha256(b"backend name").digest()
    d = hashlib.sha256(b"d").digest()
    assert batch.verify_batch([(ecdsa.public_key(sk), d, ecdsa.sign(sk, d))]) == [True]
    assert len(batch.aead_seal_batch(bytes(32), [(bytes(12), b"x", b"")])[0]) == 1 + aead.TAG_LEN
    return used


@pytest.mark.parametrize("ecdsa_native,aead_native", [(True, True), (True, False), (False, True), (False, False)])
def test_backend_name_says_which_paths_the_batch_functions_take(monkeypatch, ecdsa_native, aead_native):
    """The name is checked against the dispatch actually observed, not against the flag it is built
    from; each combination is forced where the extension is built (else only the fallback one)."""
    if (ecdsa_native or aead_native) and not batch.native_available():
        pytest.skip("native extension not built")
    monkeypatch.setattr(batch, "NATIVE_ECDSA", ecdsa_native)
    monkeypatch.setattr(batch, "NATIVE_AEAD", aead_native)
    monkeypatch.setattr(batch, "NATIVE", ecdsa_native and aead_native)
    used, name = _fallbacks_used(monkeypatch), batch.backend_name()
    assert used == {n for n, native in (("verify_batch_fallback", ecdsa_native),
                                        ("aead_seal_batch_fallback", aead_native)) if not native}
    if not used:
        assert name.startswith("native (") and "AES-GCM" in name
    elif len(used) == 2:
        assert name.startswith("fallback (")
    else:
        assert name.startswith("partly native (") and ("AES-GCM fallback" in name) == (not aead_native)
        assert ("ECDSA native" in name) == ecdsa_native


def test_backend_name_in_this_process_matches_the_observed_dispatch(monkeypatch):
    used, name = _fallbacks_used(monkeypatch), batch.backend_name()
    assert name.startswith({0: "native (", 1: "partly native (", 2: "fallback ("}[len(used)]), (name, used)
