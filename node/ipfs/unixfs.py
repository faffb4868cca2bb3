"""UnixFS file importer/exporter that reproduces kubo's and Helia's CIDs byte for byte.

Blocks are dag-pb nodes (``PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }``,
serialized Links first, then Data) whose Data is a UnixFS ``Data`` message
(``Type = 1; Data = 2; filesize = 3; repeated blocksizes = 4``), or raw leaves.

Files are split by a fixed-size chunker and arranged in a balanced DAG: leaves are grouped
``max_links`` at a time into parents, level by level, until a single root remains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .cid import (
    CODEC_DAG_PB,
    CODEC_RAW,
    Cid,
    CidError,
    encode_varint,
    multihash_sha256,
    verify,
)

__all__ = [
    "PROFILES",
    "PBLink",
    "PBNode",
    "Profile",
    "UnixfsData",
    "UnixfsError",
    "decode_pbnode",
    "decode_unixfs_data",
    "encode_pbnode",
    "encode_unixfs_data",
    "export_bytes",
    "import_bytes",
    "import_chunks",
    "is_blob",
    "iter_chunks",
]

# UnixFS Data.DataType values.
TYPE_RAW = 0
TYPE_DIRECTORY = 1
TYPE_FILE = 2
_FILE_TYPES = (TYPE_RAW, TYPE_FILE)

_WT_VARINT = 0
_WT_LEN = 2
_MAX_DEPTH = 64  # far beyond any real balanced DAG (174**64 leaves)


class UnixfsError(ValueError):
    """Malformed dag-pb / UnixFS block or inconsistent DAG."""


@dataclass(frozen=True)
class Profile:
    """Importer options. ``single_raw_leaf``: a one-chunk file with raw leaves is its own root."""

    cid_version: int
    raw_leaves: bool
    chunk_size: int
    max_links: int
    single_raw_leaf: bool

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, got {self.cid_version!r}")
        if self.cid_version == 0 and self.raw_leaves:
            raise ValueError("raw leaves need CIDv1")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if self.max_links < 2:
            raise ValueError("max_links must be at least 2")


PROFILES: dict[str, Profile] = {
    "kubo-default": Profile(0, False, 262144, 174, False),
    "kubo-cid-version-1": Profile(1, True, 262144, 174, True),
    "helia-default": Profile(1, True, 1048576, 1024, True),
}


# --- protobuf primitives ---------------------------------------------------------------------


def _key(field_no: int, wire_type: int) -> bytes:
    return encode_varint(field_no << 3 | wire_type)


def _len_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, _WT_LEN) + encode_varint(len(payload)) + payload


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Protobuf varint (up to 10 bytes, < 2**64)."""
    value = 0
    for i in range(10):
        if pos >= len(buf):
            raise UnixfsError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise UnixfsError("protobuf varint exceeds 64 bits")
            return value, pos
    raise UnixfsError("protobuf varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_no, wire_type, value)``; only varint and length-delimited are allowed."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field_no, wire_type = key >> 3, key & 7
        if field_no == 0:
            raise UnixfsError("protobuf field number 0")
        if wire_type == _WT_VARINT:
            value, pos = _read_varint(buf, pos)
            yield field_no, wire_type, value
        elif wire_type == _WT_LEN:
            length, pos = _read_varint(buf, pos)
            if length > len(buf) - pos:
                raise UnixfsError("truncated protobuf length-delimited field")
            yield field_no, wire_type, bytes(buf[pos : pos + length])
            pos += length
        else:
            raise UnixfsError(f"unsupported protobuf wire type {wire_type} (field {field_no})")


# --- dag-pb ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PBLink:
    hash: Cid
    name: str | None = ""  # kubo and Helia write an empty Name on file links
    tsize: int | None = None


@dataclass(frozen=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_pbnode(node: PBNode) -> bytes:
    """Canonical dag-pb encoding: all Links (field 2) first, then Data (field 1)."""
    out = bytearray()
    for link in node.links:
        body = _len_field(1, link.hash.to_bytes())
        if link.name is not None:
            body += _len_field(2, link.name.encode("utf-8"))
        if link.tsize is not None:
            body += _key(3, _WT_VARINT) + encode_varint(link.tsize)
        out += _len_field(2, body)
    if node.data is not None:
        out += _len_field(1, node.data)
    return bytes(out)


def _decode_pblink(buf: bytes) -> PBLink:
    last = 0
    cid: Cid | None = None
    name: str | None = None
    tsize: int | None = None
    for field_no, wire_type, value in _fields(buf):
        if field_no <= last:
            raise UnixfsError("PBLink fields out of order or repeated")
        last = field_no
        if field_no == 1 and wire_type == _WT_LEN:
            assert isinstance(value, bytes)
            try:
                cid = Cid.from_bytes(value)
            except CidError as exc:
                raise UnixfsError(f"PBLink Hash is not a valid CID: {exc}") from None
        elif field_no == 2 and wire_type == _WT_LEN:
            assert isinstance(value, bytes)
            try:
                name = value.decode("utf-8")
            except UnicodeDecodeError:
                raise UnixfsError("PBLink Name is not valid UTF-8") from None
        elif field_no == 3 and wire_type == _WT_VARINT:
            assert isinstance(value, int)
            tsize = value
        else:
            raise UnixfsError(f"unexpected PBLink field {field_no} (wire type {wire_type})")
    if cid is None:
        raise UnixfsError("PBLink without Hash")
    return PBLink(cid, name, tsize)


def decode_pbnode(buf: bytes) -> PBNode:
    """Strict dag-pb decoding (Links before Data, Data at most once, no unknown fields)."""
    links: list[PBLink] = []
    data: bytes | None = None
    for field_no, wire_type, value in _fields(buf):
        if wire_type != _WT_LEN or field_no not in (1, 2):
            raise UnixfsError(f"unexpected PBNode field {field_no} (wire type {wire_type})")
        assert isinstance(value, bytes)
        if data is not None:
            raise UnixfsError("PBNode field after Data")
        if field_no == 2:
            links.append(_decode_pblink(value))
        else:
            data = value
    return PBNode(tuple(links), data)


# --- UnixFS Data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UnixfsData:
    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default=())


def encode_unixfs_data(msg: UnixfsData) -> bytes:
    """UnixFS Data message; blocksizes are written unpacked (proto2), as kubo and Helia do."""
    out = bytearray(_key(1, _WT_VARINT) + encode_varint(msg.type))
    if msg.data:  # empty Data is omitted (the empty file is 0a 04 08 02 18 00)
        out += _len_field(2, msg.data)
    if msg.filesize is not None:
        out += _key(3, _WT_VARINT) + encode_varint(msg.filesize)
    for size in msg.blocksizes:
        out += _key(4, _WT_VARINT) + encode_varint(size)
    return bytes(out)


def decode_unixfs_data(buf: bytes) -> UnixfsData:
    """Decode a UnixFS Data message (fields 5-8 are accepted and ignored)."""
    seen: set[int] = set()
    type_: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    sizes: list[int] = []
    for field_no, wire_type, value in _fields(buf):
        if field_no != 4:
            if field_no in seen:
                raise UnixfsError(f"UnixFS field {field_no} repeated")
            seen.add(field_no)
        if field_no == 1 and wire_type == _WT_VARINT:
            assert isinstance(value, int)
            type_ = value
        elif field_no == 2 and wire_type == _WT_LEN:
            assert isinstance(value, bytes)
            data = value
        elif field_no == 3 and wire_type == _WT_VARINT:
            assert isinstance(value, int)
            filesize = value
        elif field_no == 4 and wire_type == _WT_VARINT:
            assert isinstance(value, int)
            sizes.append(value)
        elif field_no == 4 and wire_type == _WT_LEN:  # tolerate packed encoding
            assert isinstance(value, bytes)
            pos = 0
            while pos < len(value):
                size, pos = _read_varint(value, pos)
                sizes.append(size)
        elif (field_no in (5, 6, 7) and wire_type == _WT_VARINT) or (field_no == 8 and wire_type == _WT_LEN):
            pass  # hashType, fanout, mode, mtime: irrelevant to file contents
        else:
            raise UnixfsError(f"unexpected UnixFS field {field_no} (wire type {wire_type})")
    if type_ is None:
        raise UnixfsError("UnixFS Data without Type")
    return UnixfsData(type_, data, filesize, tuple(sizes))


# --- importer --------------------------------------------------------------------------------


def iter_chunks(source: bytes | Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Fixed-size chunker over bytes or an iterable of byte pieces; empty input yields one b""."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = bytes(source)
        if not view:
            yield b""
        for start in range(0, len(view), chunk_size):
            yield view[start : start + chunk_size]
        return
    buf = bytearray()
    emitted = False
    for piece in source:
        buf += piece
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
            emitted = True
    if buf or not emitted:
        yield bytes(buf)


@dataclass(frozen=True)
class _Built:
    cid: Cid
    tsize: int  # cumulative block bytes (PBLink Tsize)
    filesize: int  # file bytes below this node (UnixFS blocksize)


def _resolve(profile: Profile | str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown UnixFS profile {profile!r} (known: {', '.join(PROFILES)})") from None


def import_chunks(
    chunks: Iterable[bytes], profile: Profile | str = "helia-default"
) -> tuple[Cid, dict[Cid, bytes]]:
    """Build the balanced DAG from already-chunked data; return ``(root, blocks)``."""
    prof = _resolve(profile)
    blocks: dict[Cid, bytes] = {}

    def put(codec: int, block: bytes) -> Cid:
        cid = Cid(1 if codec == CODEC_RAW else prof.cid_version, codec, multihash_sha256(block))
        blocks[cid] = block
        return cid

    def parent(children: list[_Built]) -> _Built:
        filesize = sum(c.filesize for c in children)
        meta = UnixfsData(TYPE_FILE, filesize=filesize, blocksizes=tuple(c.filesize for c in children))
        links = tuple(PBLink(c.cid, "", c.tsize) for c in children)
        block = encode_pbnode(PBNode(links, encode_unixfs_data(meta)))
        return _Built(put(CODEC_DAG_PB, block), len(block) + sum(c.tsize for c in children), filesize)

    level: list[_Built] = []
    for chunk in chunks:
        if prof.raw_leaves:
            level.append(_Built(put(CODEC_RAW, chunk), len(chunk), len(chunk)))
        else:
            meta = UnixfsData(TYPE_FILE, data=chunk, filesize=len(chunk))
            block = encode_pbnode(PBNode((), encode_unixfs_data(meta)))
            level.append(_Built(put(CODEC_DAG_PB, block), len(block), len(chunk)))
    if not level:
        raise ValueError("chunker produced no chunks")
    if len(level) == 1 and (not prof.raw_leaves or prof.single_raw_leaf):
        return level[0].cid, blocks
    # Balanced layout: group max_links at a time, level by level (a lone raw leaf gets a parent).
    while True:
        level = [parent(level[i : i + prof.max_links]) for i in range(0, len(level), prof.max_links)]
        if len(level) == 1:
            return level[0].cid, blocks


def import_bytes(data: bytes, profile: Profile | str = "helia-default") -> tuple[Cid, dict[Cid, bytes]]:
    """Import ``data`` as a UnixFS file; return the root CID and every block keyed by CID."""
    prof = _resolve(profile)
    return import_chunks(iter_chunks(data, prof.chunk_size), prof)


# --- exporter --------------------------------------------------------------------------------


def is_blob(cid: Cid, data: bytes) -> bool:
    """Whether `data` is the file `cid` names: a raw CID's digest, or a dag-pb root that one of the
    known import profiles builds from it (a client checks a downloaded blob without its DAG)."""
    if cid.codec == CODEC_RAW:
        return verify(cid, data)
    return any(import_bytes(data, p)[0] == cid for p in PROFILES)


def export_bytes(root: Cid, get_block: Callable[[Cid], bytes], max_size: int | None = None) -> bytes:
    """Reassemble a UnixFS file, verifying every block against its CID and every size field; with
    `max_size`, UnixfsError as soon as the file would pass it. A DAG may link one block many times
    (a file of repeated chunks does), so three distinct blocks can describe terabytes: the bound
    is on what is rebuilt, checked before each piece is appended and against each node's declared
    sizes before descending."""
    out = bytearray()
    _export(root, get_block, out, 0, (1 << 62) if max_size is None else max_size)
    return bytes(out)


def _export(cid: Cid, get_block: Callable[[Cid], bytes], out: bytearray, depth: int, limit: int) -> None:
    """Append `cid`'s content to `out`, which must stay within `limit` bytes."""
    if depth > _MAX_DEPTH:
        raise UnixfsError(f"DAG deeper than {_MAX_DEPTH} levels")
    block = bytes(get_block(cid))
    if not verify(cid, block):
        raise CidError(f"block does not match its CID {cid}")
    if cid.codec == CODEC_RAW:
        if len(out) + len(block) > limit:
            raise UnixfsError(f"the file passes {limit} bytes")
        out += block
        return
    node = decode_pbnode(block)
    if node.data is None:
        raise UnixfsError(f"dag-pb node {cid} has no UnixFS Data")
    meta = decode_unixfs_data(node.data)
    if meta.type not in _FILE_TYPES:
        raise UnixfsError(f"node {cid} is UnixFS type {meta.type}, not a file")
    start = len(out)
    if meta.filesize is not None:
        limit = min(limit, start + meta.filesize)  # what it declares bounds it, as the size checks below need
    if len(out) + len(meta.data or b"") + sum(meta.blocksizes) > limit:
        raise UnixfsError(f"node {cid} declares more than the {limit - start} bytes it may hold")
    if meta.data:
        out += meta.data
    if len(meta.blocksizes) != len(node.links):
        raise UnixfsError(f"node {cid}: {len(node.links)} links but {len(meta.blocksizes)} blocksizes")
    for link, expected in zip(node.links, meta.blocksizes, strict=True):
        before = len(out)
        _export(link.hash, get_block, out, depth + 1, min(limit, before + expected))
        if len(out) - before != expected:
            raise UnixfsError(f"child {link.hash} holds {len(out) - before} bytes, blocksize says {expected}")
    if meta.filesize is not None and len(out) - start != meta.filesize:
        raise UnixfsError(f"node {cid}: filesize {meta.filesize} but content is {len(out) - start} bytes")
