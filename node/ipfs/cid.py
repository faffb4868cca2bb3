"""Content identifiers (CIDv0 / CIDv1) over sha2-256 multihashes.

Implements the subset of the multiformats specs the block store needs:

* unsigned varints (strict: minimal encoding, at most 9 bytes, no truncation),
* multihash with sha2-256 only (code 0x12, 32-byte digest),
* codecs ``raw`` (0x55) and ``dag-pb`` (0x70),
* string forms: base58btc for CIDv0 (``Qm...``) and multibase base32 lowercase,
  unpadded (``b...``) for CIDv1.

Parsing is strict: anything that would not re-encode to the same bytes/string is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from node.frozen import frozen_from

__all__ = [
    "CODEC_DAG_PB",
    "CODEC_RAW",
    "MAX_CID_BYTES",
    "SHA2_256",
    "Cid",
    "CidError",
    "base32_decode",
    "base32_encode",
    "base58_decode",
    "base58_encode",
    "cid_v1_raw",
    "decode_varint",
    "encode_varint",
    "multihash_sha256",
    "verify",
]

SHA2_256 = 0x12
SHA2_256_LEN = 32
CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_DAG_PB: "dag-pb"}
MAX_CID_BYTES = 128
MAX_VARINT_BYTES = 9  # multiformats unsigned-varint: at most 63 bits of payload

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# Longest string that could hold a 128-byte binary CID in base32, plus the multibase prefix.
_MAX_B32_CHARS = 1 + (MAX_CID_BYTES * 8 + 4) // 5
_V0_STR_LEN = 46


class CidError(ValueError):
    """Malformed, unsupported or mismatching CID."""


# --- unsigned varint -------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """Encode a non-negative integer (< 2**63) as a multiformats unsigned varint."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise CidError(f"varint value must be a non-negative int, got {n!r}")
    if n >= 1 << (7 * MAX_VARINT_BYTES):
        raise CidError(f"varint value {n} exceeds 63 bits")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset``; return ``(value, new_offset)``.

    Rejects truncated input, encodings longer than 9 bytes and non-minimal encodings.
    """
    value = 0
    shift = 0
    pos = offset
    while True:
        if pos >= len(buf):
            raise CidError("truncated varint")
        if pos - offset >= MAX_VARINT_BYTES:
            raise CidError(f"varint longer than {MAX_VARINT_BYTES} bytes")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            # A final zero byte after at least one continuation byte is a non-minimal encoding.
            if byte == 0 and pos - offset > 1:
                raise CidError("non-minimal varint encoding")
            return value, pos


# --- bases -----------------------------------------------------------------------------------


def base58_encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (leading zero bytes become '1')."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def base58_decode(text: str) -> bytes:
    """Inverse of :func:`base58_encode`; raises CidError on characters outside the alphabet."""
    n = 0
    for i, ch in enumerate(text):
        idx = _B58_INDEX.get(ch)
        if idx is None:
            raise CidError(f"invalid base58btc character {ch!r} at position {i}")
        n = n * 58 + idx
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def base32_encode(data: bytes) -> str:
    """RFC 4648 base32, lowercase, without padding (multibase 'b' payload)."""
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def base32_decode(text: str) -> bytes:
    """Strict inverse of :func:`base32_encode` (rejects bad characters, lengths and padding bits)."""
    for i, ch in enumerate(text):
        if ch not in _B32_ALPHABET:
            raise CidError(f"invalid base32 character {ch!r} at position {i}")
    if len(text) % 8 in (1, 3, 6):
        raise CidError(f"invalid base32 length {len(text)}")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        data = base64.b32decode(padded)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise CidError(f"invalid base32: {exc}") from None
    if base32_encode(data) != text:
        raise CidError("non-canonical base32 (non-zero trailing bits)")
    return data


# --- multihash -------------------------------------------------------------------------------


def multihash_sha256(data: bytes) -> bytes:
    """sha2-256 multihash of ``data``: 0x12 0x20 || digest."""
    return bytes((SHA2_256, SHA2_256_LEN)) + hashlib.sha256(data).digest()


def _check_multihash(mh: bytes) -> None:
    code, pos = decode_varint(mh)
    if code != SHA2_256:
        raise CidError(f"unsupported multihash function 0x{code:x} (only sha2-256 0x12)")
    length, pos = decode_varint(mh, pos)
    if length != SHA2_256_LEN:
        raise CidError(f"sha2-256 digest length must be {SHA2_256_LEN}, got {length}")
    if len(mh) - pos < length:
        raise CidError("truncated multihash digest")
    if len(mh) - pos > length:
        raise CidError("trailing bytes after multihash digest")


# --- CID -------------------------------------------------------------------------------------


# the 4-byte prefixes of a CIDv1 with a sha2-256 digest (version 1, codec, 0x12 0x20), by codec
_V1_SHA256 = {bytes((1, codec, SHA2_256, SHA2_256_LEN)): codec for codec in (CODEC_RAW, CODEC_DAG_PB)}


def is_v1_sha256(b: bytes) -> bool:
    """Whether `b` is a binary CIDv1, raw or dag-pb, with a sha2-256 digest: the one form a data
    write may name. One form per blob: a CIDv0 names the same bytes as its CIDv1 dag-pb twin, and a
    write naming another patient's blob under a second form would make its writer that blob's patient
    of record, free to download it."""
    return len(b) == 4 + SHA2_256_LEN and b[:4] in _V1_SHA256


@dataclass(frozen=True)
class Cid:
    """A validated CID. ``multihash`` is the full multihash (code, length, digest)."""

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise CidError(f"unsupported CID version {self.version!r}")
        if self.codec not in CODEC_NAMES:
            raise CidError(f"unsupported codec {self.codec!r} (only raw 0x55 and dag-pb 0x70)")
        if self.version == 0 and self.codec != CODEC_DAG_PB:
            raise CidError("CIDv0 must use the dag-pb codec")
        if not isinstance(self.multihash, bytes):
            raise CidError("multihash must be bytes")
        _check_multihash(self.multihash)

    @property
    def digest(self) -> bytes:
        """The 32-byte sha2-256 digest."""
        return self.multihash[2:]

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES[self.codec]

    def to_bytes(self) -> bytes:
        """Binary CID; a CIDv0 is the bare multihash."""
        if self.version == 0:
            return self.multihash
        b = self.__dict__.get("_bytes")  # cached: bitswap encodes the same CIDs over and over
        if b is None:
            b = encode_varint(1) + encode_varint(self.codec) + self.multihash
            object.__setattr__(self, "_bytes", b)
        return b

    def encode(self) -> str:
        """String form: base58btc for v0, multibase base32 ('b' prefix) for v1."""
        if self.version == 0:
            return base58_encode(self.multihash)
        return "b" + base32_encode(self.to_bytes())

    def __str__(self) -> str:
        return self.encode()

    def to_v1(self) -> Cid:
        # a v1 CID is its own v1 form (immutable): no new object, and its cached bytes kept
        return self if self.version == 1 else Cid(1, self.codec, self.multihash)

    @classmethod
    def from_bytes(cls, b: bytes) -> Cid:
        """Parse a binary CID (v0 bare multihash or v1 version/codec/multihash)."""
        b = bytes(b)
        codec = _V1_SHA256.get(b[:4]) if len(b) == 4 + SHA2_256_LEN else None
        if codec is not None:  # the CID of nearly every write: what __post_init__ checks holds by its prefix
            return frozen_from(cls, {"version": 1, "codec": codec, "multihash": b[2:], "_bytes": b})  # to_bytes' cache too
        if not b:
            raise CidError("empty CID")
        if len(b) > MAX_CID_BYTES:
            raise CidError(f"binary CID longer than {MAX_CID_BYTES} bytes")
        if b[0] == SHA2_256:  # CIDv0: a multihash starting with 0x12 0x20
            if len(b) != 2 + SHA2_256_LEN or b[1] != SHA2_256_LEN:
                raise CidError("invalid CIDv0: expected a 34-byte sha2-256 multihash")
            return cls(0, CODEC_DAG_PB, b)
        version, pos = decode_varint(b)
        if version != 1:
            raise CidError(f"unsupported CID version {version}")
        codec, pos = decode_varint(b, pos)
        if codec not in CODEC_NAMES:
            raise CidError(f"unsupported codec 0x{codec:x} (only raw 0x55 and dag-pb 0x70)")
        return cls(1, codec, b[pos:])

    @classmethod
    def parse(cls, s: str) -> Cid:
        """Parse the string form; CIDv0 must be base58btc ``Qm...``, CIDv1 base32 ``b...``."""
        if not isinstance(s, str):
            raise CidError(f"CID string must be str, got {type(s).__name__}")
        if not s:
            raise CidError("empty CID string")
        if len(s) == _V0_STR_LEN and s.startswith("Qm"):
            cid = cls.from_bytes(base58_decode(s))
            if cid.version != 0:  # pragma: no cover - a Qm... string always decodes to 0x12 0x20
                raise CidError("base58btc CID must be CIDv0")
            return cid
        prefix = s[0]
        if prefix != "b":
            raise CidError(f"unsupported multibase prefix {prefix!r} (expected 'b' or a 'Qm...' CIDv0)")
        if len(s) > _MAX_B32_CHARS:
            raise CidError(f"CID string longer than {_MAX_B32_CHARS} characters")
        cid = cls.from_bytes(base32_decode(s[1:]))
        if cid.version != 1:
            raise CidError("a CIDv0 must be written in base58btc, not base32")
        return cid


_RAW_V1 = bytes((1, CODEC_RAW, SHA2_256, SHA2_256_LEN))


def cid_v1_raw(data: bytes) -> Cid:
    """CIDv1 of ``data`` as a raw block."""
    return Cid.from_bytes(raw_cid_bytes(data))


def raw_cid_bytes(data: bytes) -> bytes:
    """The binary CIDv1 of ``data`` as a raw block (what a write records), without a Cid object:
    a load generator makes thousands a second."""
    return _RAW_V1 + hashlib.sha256(data).digest()


def verify(cid: Cid, data: bytes) -> bool:
    """True if ``data`` hashes to ``cid``'s digest (constant-time comparison)."""
    return hmac.compare_digest(hashlib.sha256(data).digest(), cid.digest)
