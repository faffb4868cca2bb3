"""Sidecars: a data write's ciphertext travelling beside its signed transaction (the paper's
Protocol 4, kept off the chain as Ethereum's EIP-4844 blob transactions do).

The signed bytes, the transaction id and the block hold only the CID; the sidecar rides in the
submission (`POST /v1/tx`, `POST /v1/txs`) and in the batches validators forward to each other, so
every validator holds the blob at commit without a bitswap round.

A submission item is either
  - a msgpack bin: the transaction alone (its blob is already held, or it is not a write), or
  - a msgpack array ``[tx: bin, sidecar: bin]``: a data write and its ciphertext.
`POST /v1/txs` takes a msgpack array of items; forwarded batches carry the same items.
`POST /v1/tx` takes the transaction's bytes, or the array ``[tx, sidecar]``: both are msgpack arrays
of two bins, told apart by the first bin: a transaction's is its payload (an array of at least six
fields), a submission's is a transaction (an array of two, starting 0x92).

Only a blob that is one raw block rides inline: at most SIDECAR_MAX bytes (1 MiB, the UnixFS chunk
of Helia's defaults, so its CID is CIDv1 raw sha2-256 of the bytes and checking it is one SHA-256).
Larger blobs are dag-pb DAGs: uploaded on their own (`POST /v1/blobs`) and exchanged over bitswap.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

import msgpack

from node.consensus.messages import MAX_MESSAGE_BYTES
from node.ipfs.cid import CODEC_RAW
from node.tx import Tx, Write
from node.wire import WireError, decode, encode

SIDECAR_MAX = 1024 * 1024
Item = tuple[bytes, bytes | None]  # (transaction bytes, sidecar or None)


class SidecarError(ValueError):
    """A malformed submission item or a sidecar that does not match its transaction."""


def parse_item(obj: object) -> Item:
    """One decoded submission item -> (transaction bytes, sidecar or None)."""
    if isinstance(obj, bytes):
        return obj, None
    if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], bytes) and isinstance(obj[1], bytes):
        return obj[0], obj[1]
    raise SidecarError("an item is transaction bytes, or [transaction bytes, sidecar bytes]")


def item_obj(raw: bytes, sidecar: bytes | None) -> bytes | list[bytes]:
    """The msgpack value of one submission item (inverse of parse_item)."""
    return raw if sidecar is None else [raw, sidecar]


def encode_submission(raw: bytes, sidecar: bytes | None) -> bytes:
    """The body of `POST /v1/tx`: the transaction itself, or [tx, sidecar]."""
    return raw if sidecar is None else encode([raw, sidecar])


def decode_submission(body: bytes, max_bytes: int) -> Item:
    """The body of `POST /v1/tx` -> (transaction bytes, sidecar or None)."""
    if body[:1] == b"\x92" and body[1:2] in (b"\xc4", b"\xc5", b"\xc6"):
        try:
            obj = decode(body, max_bytes, 3)
        except WireError:
            return body, None  # not a submission: the transaction decoder says what is wrong
        if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], bytes) and obj[0][:1] == b"\x92":
            return parse_item(obj)
    return body, None


def check_sidecar(tx: Tx, data: bytes) -> str | None:
    """None if `data` is exactly the blob the write names (size and CID), else why not."""
    w = tx.body
    if not isinstance(w, Write):
        return "a sidecar rides only with a data write"
    if len(data) != w.size:
        return f"sidecar is {len(data)} bytes, the write says {w.size}"
    if len(data) > SIDECAR_MAX:
        return f"sidecar of {len(data)} bytes exceeds {SIDECAR_MAX}: upload larger blobs with POST /v1/blobs"
    cid = w.root  # parses: Write.parse takes only a CIDv1 of sha2-256
    if cid.codec != CODEC_RAW:
        return f"a sidecar's CID must be raw (one block of at most {SIDECAR_MAX} bytes), not {cid.codec_name}"
    if hashlib.sha256(data).digest() != cid.digest:
        return f"sidecar does not hash to {cid}"
    return None


class SidecarCache:
    """Sidecars seen in forwarded batches, by the SHA-256 of their bytes (a raw CID's digest), so a
    block that commits before its batch is admitted still finds them. Self-verifying: a lookup by
    digest can only return the bytes with that digest. Bounded in bytes, oldest out first; the
    commit takes out what it stored, so what stays is the writes in flight, not the last 16 MiB."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def add(self, data: bytes) -> None:
        if len(data) > SIDECAR_MAX:
            return
        key = hashlib.sha256(data).digest()
        if key in self._items:
            return
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self.bytes -= len(self._items.popitem(last=False)[1])

    def get(self, digest: bytes) -> bytes | None:
        return self._items.get(digest)

    def discard(self, digests: Iterable[bytes]) -> None:
        for d in digests:
            data = self._items.pop(d, None)
            if data is not None:
                self.bytes -= len(data)


# ---- forwarded batches among validators: [T_TXS, [item, ...]] ---------------------------------
T_TXS = 16  # p2p message tag: a batch of client transactions (and sidecars) forwarded to the others
TXS_PREFIX = bytes([0x92, T_TXS])  # how an encoded [T_TXS, batch] starts: checked before decoding
FORWARD_CHUNK = 768 * 1024  # bytes per forwarded message: under a p2p frame and the 1 MiB mmap threshold


# items per forwarded batch, as many as a client's POST /v1/txs: a receiver refuses a batch declaring
# more before decoding it (8 MiB of 2-byte items decodes to ~200 MB of objects and holds the loop)
MAX_FORWARD_ITEMS = 4096


def forward_messages(items: list[Item], chunk: int = FORWARD_CHUNK) -> list[bytes]:
    """Encode items as forwarded-batch messages of at most ~`chunk` bytes and MAX_FORWARD_ITEMS
    items each."""
    out: list[bytes] = []
    cur: list[bytes | list[bytes]] = []
    size = 0
    for raw, side in items:
        n = len(raw) + (len(side) + 16 if side is not None else 0) + 8
        if cur and (size + n > chunk or len(cur) >= MAX_FORWARD_ITEMS):
            out.append(encode([T_TXS, cur]))
            cur, size = [], 0
        cur.append(item_obj(raw, side))
        size += n
    if cur:
        out.append(encode([T_TXS, cur]))
    return out


def decode_forwarded(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Item]:
    """A forwarded-batch message -> its items; WireError or SidecarError if malformed or if it
    declares more than MAX_FORWARD_ITEMS items (read from its array header, before decoding)."""
    declared = _declared_items(data)
    if declared > MAX_FORWARD_ITEMS:
        raise SidecarError(f"a forwarded batch holds at most {MAX_FORWARD_ITEMS} items, this one declares {declared}")
    obj = decode(data, max_bytes, 3 + 3 * MAX_FORWARD_ITEMS)  # [T_TXS, [item or [tx, sidecar], ...]]
    if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == T_TXS and isinstance(obj[1], list)):
        raise SidecarError("a forwarded batch is [16, [item, ...]]")
    return [parse_item(x) for x in obj[1]]


def _declared_items(data: bytes) -> int:
    """How many items the batch array of an encoded [T_TXS, batch] declares; 0 if it is not one
    (decoding then says why)."""
    if data[:2] != TXS_PREFIX:
        return 0
    head = msgpack.Unpacker()
    head.feed(data[2:7])  # an array header is at most 5 bytes
    try:
        return int(head.read_array_header())
    except (ValueError, msgpack.OutOfData):
        return 0
