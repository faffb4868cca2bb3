"""The bitswap 1.2.0 protobuf message, hand-coded (a handful of fields; no generated code).

    message Message {
      message Wantlist {
        enum WantType { Block = 0; Have = 1; }
        message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3;
                        WantType wantType = 4; bool sendDontHave = 5; }
        repeated Entry entries = 1; bool full = 2;
      }
      message Block { bytes prefix = 1; bytes data = 2; }
      enum BlockPresenceType { Have = 0; DontHave = 1; }
      message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
      Wantlist wantlist = 1; repeated bytes blocks = 2 /* 1.0.0 */; repeated Block payload = 3;
      repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5;
    }

Decoding is tolerant where proto3 is (unknown fields skipped, repeated scalars in any order) and
strict where bad input could hurt (lengths, varint sizes, CIDs, the message size cap).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .cid import CODEC_DAG_PB, CODEC_NAMES, SHA2_256, SHA2_256_LEN, Cid, CidError, multihash_sha256

WANT_BLOCK, WANT_HAVE = 0, 1
HAVE, DONT_HAVE = 0, 1
MAX_MESSAGE = 4 * 1024 * 1024  # go-bitswap's and Helia's inbound cap
# wantlist entries, and block presences, one message may carry (a peer's whole wantlist is kept to as
# many, node/ipfs/bitswap.py): a 4 MiB message of ~95,000 entries cost ~0.6 s of the p2p thread to
# decode and answer (a review); senders here split at it
MAX_ENTRIES = 8192


class MessageError(ValueError):
    """A bitswap message that does not decode."""


@dataclass(frozen=True)
class Entry:
    cid: Cid
    priority: int = 1
    cancel: bool = False
    want_type: int = WANT_BLOCK
    send_dont_have: bool = False


@dataclass
class Message:
    entries: list[Entry] = field(default_factory=list)
    full: bool = False
    blocks: list[tuple[Cid, bytes]] = field(default_factory=list)  # payload, CID rebuilt from prefix
    presences: list[tuple[Cid, int]] = field(default_factory=list)
    pending_bytes: int = 0

    def empty(self) -> bool:
        return not (self.entries or self.full or self.blocks or self.presences)


# ---- protobuf primitives ----------------------------------------------------------------------
_KEYS = {(no, wt): bytes((no << 3 | wt,)) for no in range(1, 6) for wt in (0, 2)}  # hot: precomputed
_SMALL = [bytes((i,)) for i in range(128)]


def _uvarint(v: int) -> bytes:
    if v < 128:
        return _SMALL[v]
    out = bytearray()
    while v > 0x7F:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _key(no: int, wt: int) -> bytes:
    return _KEYS[no, wt]


def _bytes_field(no: int, b: bytes) -> bytes:
    return _KEYS[no, 2] + _uvarint(len(b)) + b


def _int_field(no: int, v: int) -> bytes:
    return _KEYS[no, 0] + _uvarint(v & (2**64 - 1))  # int32 negatives: 10-byte two's complement


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(10):
        if pos >= len(buf):
            raise MessageError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value & (2**64 - 1), pos
    raise MessageError("varint longer than 10 bytes")


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _fields(buf: bytes | memoryview) -> Iterator[tuple[int, int | bytes | memoryview]]:
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        no, wt = key >> 3, key & 7
        if no == 0:
            raise MessageError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos)
            yield no, v
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if n > end - pos:
                raise MessageError("truncated length-delimited field")
            yield no, buf[pos : pos + n]
            pos += n
        elif wt in (1, 5):  # fixed64 / fixed32: no such field here; skip
            pos += 8 if wt == 1 else 4
            if pos > end:
                raise MessageError("truncated fixed field")
        else:
            raise MessageError(f"unsupported wire type {wt}")


# ---- CID prefixes -------------------------------------------------------------------------------
def cid_prefix(cid: Cid) -> bytes:
    """version, codec, multihash code, digest length as varints (go-cid's Prefix.Bytes; a CIDv0 is
    0x00 0x70 0x12 0x20, not empty as py-libp2p 0.8.1 sends it)."""
    return _uvarint(cid.version) + _uvarint(cid.codec) + bytes((SHA2_256, SHA2_256_LEN))


def cid_from_prefix(prefix: bytes, data: bytes) -> Cid:
    """The CID of ``data`` under ``prefix``; refuses prefixes we cannot hash for."""
    try:
        pos, parts = 0, []
        for _ in range(4):
            v, pos = _varint(prefix, pos)
            parts.append(v)
    except MessageError:
        raise MessageError(f"bad CID prefix {bytes(prefix).hex()}") from None
    if pos != len(prefix):
        raise MessageError(f"trailing bytes in CID prefix {bytes(prefix).hex()}")
    version, codec, mh, length = parts
    if mh != SHA2_256 or length not in (SHA2_256_LEN, 0xFFFFFFFFFFFFFFFF):  # -1: default length
        raise MessageError(f"unsupported multihash 0x{mh:x}/{length} in prefix (only sha2-256)")
    if codec not in CODEC_NAMES or version not in (0, 1) or (version == 0 and codec != CODEC_DAG_PB):
        raise MessageError(f"unsupported CID version/codec {version}/0x{codec:x} in prefix")
    return Cid(version, codec, multihash_sha256(data))


# ---- encode -------------------------------------------------------------------------------------
def encode_message(msg: Message) -> bytes:
    out = bytearray()
    if msg.entries or msg.full:
        wl = bytearray()
        for e in msg.entries:
            body = _bytes_field(1, e.cid.to_bytes())
            if e.priority:
                body += _int_field(2, e.priority)
            if e.cancel:
                body += _int_field(3, 1)
            if e.want_type:
                body += _int_field(4, e.want_type)
            if e.send_dont_have:
                body += _int_field(5, 1)
            wl += _bytes_field(1, body)
        if msg.full:
            wl += _int_field(2, 1)
        out += _bytes_field(1, bytes(wl))
    for cid, data in msg.blocks:
        out += _bytes_field(3, _bytes_field(1, cid_prefix(cid)) + _bytes_field(2, data))
    for cid, kind in msg.presences:
        body = _bytes_field(1, cid.to_bytes()) + (_int_field(2, kind) if kind else b"")
        out += _bytes_field(4, body)
    if msg.pending_bytes:
        out += _int_field(5, msg.pending_bytes)
    return bytes(out)


# ---- decode -------------------------------------------------------------------------------------
def _cid(b: bytes | memoryview, what: str) -> Cid:
    try:
        return Cid.from_bytes(bytes(b))
    except CidError as exc:
        raise MessageError(f"{what}: {exc}") from None


def _entry(buf: bytes | memoryview) -> Entry:
    cid, prio, cancel, wtype, sdh = None, 1, False, WANT_BLOCK, False
    for no, v in _fields(buf):
        if no == 1 and not isinstance(v, int):
            cid = _cid(v, "wantlist entry")
        elif no == 2 and isinstance(v, int):
            prio = _int32(v)
        elif no == 3 and isinstance(v, int):
            cancel = bool(v)
        elif no == 4 and isinstance(v, int):
            if v not in (WANT_BLOCK, WANT_HAVE):
                raise MessageError(f"unknown want type {v}")
            wtype = v
        elif no == 5 and isinstance(v, int):
            sdh = bool(v)
    if cid is None:
        raise MessageError("wantlist entry without a CID")
    return Entry(cid, prio, cancel, wtype, sdh)


def decode_message(buf: bytes, max_size: int = MAX_MESSAGE) -> Message:
    if len(buf) > max_size:
        raise MessageError(f"message of {len(buf)} bytes over {max_size}")
    msg = Message()
    mv = memoryview(buf)
    for no, v in _fields(mv):
        if no == 1 and isinstance(v, memoryview):
            for wno, wv in _fields(v):
                if wno == 1 and isinstance(wv, memoryview):
                    if len(msg.entries) >= MAX_ENTRIES:
                        raise MessageError(f"more than {MAX_ENTRIES} wantlist entries in one message")
                    msg.entries.append(_entry(wv))
                elif wno == 2 and isinstance(wv, int):
                    msg.full = bool(wv)
        elif no == 2 and isinstance(v, memoryview):  # bitswap 1.0.0 block: implicitly CIDv0
            data = bytes(v)
            msg.blocks.append((Cid(0, CODEC_DAG_PB, multihash_sha256(data)), data))
        elif no == 3 and isinstance(v, memoryview):
            prefix, data = b"", b""
            for bno, bv in _fields(v):
                if bno == 1 and isinstance(bv, memoryview):
                    prefix = bytes(bv)
                elif bno == 2 and isinstance(bv, memoryview):
                    data = bytes(bv)
            msg.blocks.append((cid_from_prefix(prefix, data), data))
        elif no == 4 and isinstance(v, memoryview):
            if len(msg.presences) >= MAX_ENTRIES:
                raise MessageError(f"more than {MAX_ENTRIES} block presences in one message")
            cid, kind = None, HAVE
            for pno, pv in _fields(v):
                if pno == 1 and isinstance(pv, memoryview):
                    cid = _cid(pv, "block presence")
                elif pno == 2 and isinstance(pv, int):
                    kind = pv
            if cid is None or kind not in (HAVE, DONT_HAVE):
                raise MessageError("block presence without a CID or with an unknown type")
            msg.presences.append((cid, kind))
        elif no == 5 and isinstance(v, int):
            msg.pending_bytes = _int32(v)
    return msg
