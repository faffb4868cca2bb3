"""Project Wycheproof vectors through every ECDSA verify path and every AES-GCM path we ship."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.crypto import aead, ecdsa
from node.crypto.aead import AeadError
from tests.conftest import vector_file

ECDSA_FILE = "wycheproof_ecdsa_secp256k1_sha256_bitcoin_test.json"
GCM_FILE = "wycheproof_aes_gcm_test.json"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def load(name: str) -> dict:
    return json.loads(vector_file(name).read_text())


# ---------------------------------------------------------------- strict DER


def _der_len(b: bytes, off: int) -> tuple[int, int] | None:
    """Definite, minimal DER length at b[off]; (length, offset after it) or None."""
    if off >= len(b):
        return None
    first = b[off]
    if first < 0x80:
        return first, off + 1
    k = first & 0x7F
    if k == 0 or k > 4 or off + 1 + k > len(b):  # 0x80 = indefinite (BER only)
        return None
    body = b[off + 1 : off + 1 + k]
    if body[0] == 0:
        return None  # leading zero in a long-form length
    n = int.from_bytes(body, "big")
    if n < 0x80:
        return None  # long form used for a length that fits the short form
    return n, off + 1 + k


def _der_uint(b: bytes, off: int) -> tuple[int, int] | None:
    """A non-negative, minimally encoded INTEGER at b[off]."""
    if off >= len(b) or b[off] != 0x02:
        return None
    ln = _der_len(b, off + 1)
    if ln is None:
        return None
    n, start = ln
    if n == 0 or start + n > len(b):
        return None
    body = b[start : start + n]
    if body[0] & 0x80:
        return None  # negative
    if n > 1 and body[0] == 0 and not body[1] & 0x80:
        return None  # superfluous leading zero
    return int.from_bytes(body, "big"), start + n


def der_to_compact(sig: bytes) -> bytes | None:
    """Strict DER ECDSA-Sig-Value -> 64-byte r || s; None unless the bytes are exactly strict DER.

    r and s outside [1, n-1] are passed through when they fit 32 bytes: rejecting them is the
    verifier's job. Values that cannot fit 32 bytes cannot be a valid signature, so None.
    """
    if len(sig) < 2 or sig[0] != 0x30:
        return None
    ln = _der_len(sig, 1)
    if ln is None or ln[1] + ln[0] != len(sig):
        return None
    r = _der_uint(sig, ln[1])
    if r is None:
        return None
    s = _der_uint(sig, r[1])
    if s is None or s[1] != len(sig):
        return None
    if r[0] >= 1 << 256 or s[0] >= 1 << 256:
        return None
    return r[0].to_bytes(32, "big") + s[0].to_bytes(32, "big")


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")  # room for a sign bit
    return b"\x02" + bytes([len(body)]) + body


def compact_to_der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


@given(st.integers(0, (1 << 256) - 1), st.integers(0, (1 << 256) - 1))
def test_der_parser_round_trip(r, s):
    der = compact_to_der(r, s)
    assert der_to_compact(der) == r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert der_to_compact(der + b"\x00") is None
    assert der_to_compact(der[:-1]) is None


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x31\x06\x02\x01\x01\x02\x01\x01",  # SET, not SEQUENCE
        b"\x30\x06\x03\x01\x01\x02\x01\x01",  # BIT STRING for r
        b"\x30\x81\x06\x02\x01\x01\x02\x01\x01",  # long-form length below 128
        b"\x30\x80\x02\x01\x01\x02\x01\x01\x00\x00",  # indefinite length
        b"\x30\x07\x02\x02\x00\x01\x02\x01\x01",  # zero-padded r
        b"\x30\x06\x02\x01\x81\x02\x01\x01",  # negative r
        b"\x30\x05\x02\x00\x02\x01\x01",  # empty integer
        b"\x30\x07\x02\x01\x01\x02\x01\x01",  # sequence length too long
        b"\x30\x09\x02\x01\x01\x02\x01\x01\x02\x01\x01",  # a third integer
    ],
)
def test_der_parser_rejects_non_strict(der):
    assert der_to_compact(der) is None


def test_der_parser_accepts_boundary_values():
    assert der_to_compact(b"\x30\x06\x02\x01\x00\x02\x01\x7f") == bytes(32) + (0x7F).to_bytes(32, "big")
    assert der_to_compact(b"\x30\x07\x02\x02\x00\x80\x02\x01\x01") == (0x80).to_bytes(32, "big") + (1).to_bytes(
        32, "big"
    )


def test_der_parser_agrees_with_cryptography_on_every_vector():
    """An independent strict DER decoder (cryptography's) accepts exactly the same signatures."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    seen = 0
    for g in load(ECDSA_FILE)["testGroups"]:
        for t in g["tests"]:
            sig = bytes.fromhex(t["sig"])
            try:
                r, s = decode_dss_signature(sig)
                ref = r.to_bytes(32, "big") + s.to_bytes(32, "big") if max(r, s) < 1 << 256 else None
            except ValueError:
                ref = None
            assert der_to_compact(sig) == ref, t["tcId"]
            seen += 1
    assert seen == 463


# ---------------------------------------------------------------- ECDSA


def ecdsa_cases():
    """[(tcId, result, pubkey33 | None, digest, compact | None)] for the whole file."""
    data = load(ECDSA_FILE)
    out = []
    for g in data["testGroups"]:
        try:
            pk = ecdsa.compress(bytes.fromhex(g["publicKey"]["uncompressed"]))
        except ValueError:
            pk = None
        for t in g["tests"]:
            digest = hashlib.sha256(bytes.fromhex(t["msg"])).digest()
            out.append((t["tcId"], t["result"], pk, digest, der_to_compact(bytes.fromhex(t["sig"]))))
    assert len(out) == data["numberOfTests"] == 463
    return out


def _items(cases):
    return [(pk or b"", d, sig or b"") for _, _, pk, d, sig in cases]


def test_ecdsa_wycheproof_single_and_batch():
    cases = ecdsa_cases()
    single = [ecdsa.verify(*item) for item in _items(cases)]
    batch = ecdsa.verify_batch_fallback(_items(cases))
    assert batch == single
    tally = Counter()
    acceptable = {}
    for (tc, result, pk, _, sig), got in zip(cases, single, strict=True):
        if result == "valid":
            assert pk is not None and sig is not None, f"tc {tc}: valid case not parsed"
            assert got, f"tc {tc}: valid signature rejected"
        elif result == "invalid":
            assert not got, f"tc {tc}: invalid signature accepted"
        else:
            assert result == "acceptable", result
            acceptable[tc] = got
        tally[result, "der" if sig is not None else "not-der"] += 1
    # Fixed counts, so a parser that silently drops cases (or vectors that change) fails here.
    assert tally == {("valid", "der"): 162, ("invalid", "der"): 69, ("invalid", "not-der"): 232}, tally
    assert acceptable == {}


def test_ecdsa_single_batch_agree_on_small_batches():
    items = _items(ecdsa_cases())
    for chunk in (items[:1], items[:63], items[100:164]):  # both sides of the threading threshold
        assert ecdsa.verify_batch_fallback(chunk) == [ecdsa.verify(*i) for i in chunk]


def test_ecdsa_high_s_of_valid_signatures_rejected():
    valid = [(pk, d, sig) for _, res, pk, d, sig in ecdsa_cases() if res == "valid"]
    assert len(valid) == 162
    flipped = []
    for pk, d, sig in valid:
        s = int.from_bytes(sig[32:], "big")
        assert 1 <= s <= N // 2, "a valid bitcoin-variant signature is low-S"
        flipped.append((pk, d, sig[:32] + (N - s).to_bytes(32, "big")))
    assert not any(ecdsa.verify(*i) for i in flipped)
    assert ecdsa.verify_batch_fallback(flipped) == [False] * len(flipped)
    assert ecdsa.verify_batch_fallback(valid) == [True] * len(valid)  # the low-S originals still pass


# ---------------------------------------------------------------- AES-GCM


def gcm_groups():
    data = load(GCM_FILE)
    total = sum(len(g["tests"]) for g in data["testGroups"])
    assert total == data["numberOfTests"] == 316
    return data["testGroups"]


def _hex(t, k):
    return bytes.fromhex(t[k])


def test_aes_gcm_wycheproof_single():
    tally = Counter()
    for g in gcm_groups():
        assert g["keySize"] in (128, 192, 256)
        for t in g["tests"]:
            key, iv, aad, msg, ct, tag = (_hex(t, k) for k in ("key", "iv", "aad", "msg", "ct", "tag"))
            assert len(iv) * 8 == g["ivSize"] and len(tag) * 8 == g["tagSize"]
            if len(iv) != aead.NONCE_LEN:
                with pytest.raises(AeadError, match="unsupported nonce size"):
                    aead.open_(key, iv, ct + tag, aad)
                with pytest.raises(AeadError, match="unsupported nonce size"):
                    aead.seal(key, iv, msg, aad)
                tally["unsupported-nonce"] += 1
                continue
            assert g["tagSize"] == 128
            if t["result"] == "valid":
                assert aead.open_(key, iv, ct + tag, aad) == msg, t["tcId"]
                assert aead.seal(key, iv, msg, aad) == ct + tag, t["tcId"]
                tally["valid"] += 1
            else:
                assert t["result"] == "invalid"
                with pytest.raises(AeadError, match="authentication failed"):
                    aead.open_(key, iv, ct + tag, aad)
                tally["invalid"] += 1
    assert tally == {"valid": 116, "invalid": 81, "unsupported-nonce": 119}, tally


def test_aes_gcm_wycheproof_batch():
    by_key: dict[bytes, list] = {}
    for g in gcm_groups():
        for t in g["tests"]:
            if len(_hex(t, "iv")) == aead.NONCE_LEN:
                by_key.setdefault(_hex(t, "key"), []).append(t)
    exercised = Counter()
    for key, tests in by_key.items():
        opened = aead.open_batch(key, [(_hex(t, "iv"), _hex(t, "ct") + _hex(t, "tag"), _hex(t, "aad")) for t in tests])
        for t, got in zip(tests, opened, strict=True):
            assert got == (_hex(t, "msg") if t["result"] == "valid" else None), t["tcId"]
            exercised[t["result"]] += 1
        valid = [t for t in tests if t["result"] == "valid"]
        sealed = aead.seal_batch(key, [(_hex(t, "iv"), _hex(t, "msg"), _hex(t, "aad")) for t in valid])
        assert sealed == [_hex(t, "ct") + _hex(t, "tag") for t in valid]
    assert exercised == {"valid": 116, "invalid": 81}, exercised


def test_aes_gcm_batch_refuses_unsupported_nonce():
    refused = 0
    for g in gcm_groups():
        for t in g["tests"]:
            iv = _hex(t, "iv")
            if len(iv) == aead.NONCE_LEN:
                continue
            key, good = _hex(t, "key"), (bytes(12), b"", b"")
            with pytest.raises(AeadError, match="unsupported nonce size"):
                aead.open_batch(key, [good, (iv, _hex(t, "ct") + _hex(t, "tag"), _hex(t, "aad"))])
            with pytest.raises(AeadError, match="unsupported nonce size"):
                aead.seal_batch(key, [good[:2] + (b"",), (iv, _hex(t, "msg"), _hex(t, "aad"))])
            refused += 1
    assert refused == 119


def test_aes_gcm_truncated_tags_refused():
    """Only 16-byte tags: the file has no other tag size, so truncate the valid ones ourselves."""
    groups = gcm_groups()
    assert [g["tagSize"] for g in groups if g["tagSize"] != 128] == []
    refused = 0
    for g in groups:
        for t in g["tests"]:
            iv = _hex(t, "iv")
            if t["result"] != "valid" or len(iv) != aead.NONCE_LEN:
                continue
            key, aad, ct, tag = _hex(t, "key"), _hex(t, "aad"), _hex(t, "ct"), _hex(t, "tag")
            for tlen in (15, 12, 8, 4):
                with pytest.raises(AeadError):
                    aead.open_(key, iv, ct + tag[:tlen], aad)
                assert aead.open_batch(key, [(iv, ct + tag[:tlen], aad)]) == [None]
                refused += 1
    assert refused == 116 * 4


def test_aes_gcm_unsupported_key_size():
    for bad in (b"", bytes(15), bytes(31), bytes(64)):
        with pytest.raises(AeadError, match="unsupported AES key size"):
            aead.seal(bad, bytes(12), b"x")
        with pytest.raises(AeadError, match="unsupported AES key size"):
            aead.open_(bad, bytes(12), bytes(16))
        with pytest.raises(AeadError, match="unsupported AES key size"):
            aead.seal_batch(bad, [])
        with pytest.raises(AeadError, match="unsupported AES key size"):
            aead.open_batch(bad, [])


@given(st.binary(max_size=200), st.binary(max_size=40), st.integers(0, 10_000))
def test_aes_gcm_round_trip_and_bit_flip(pt, aad, flip):
    key, nonce = aead.new_key(), aead.new_nonce()
    sealed = aead.seal(key, nonce, pt, aad)
    assert len(sealed) == len(pt) + aead.TAG_LEN
    assert aead.open_(key, nonce, sealed, aad) == pt
    bit = flip % (len(sealed) * 8)
    bad = bytearray(sealed)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(AeadError):
        aead.open_(key, nonce, bytes(bad), aad)
    with pytest.raises(AeadError):
        aead.open_(key, nonce, sealed, aad + b"x")
    assert aead.open_batch(key, [(nonce, sealed, aad), (nonce, bytes(bad), aad), (nonce, sealed[:15], aad)]) == [
        pt,
        None,
        None,
    ]
