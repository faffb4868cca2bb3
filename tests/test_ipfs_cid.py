"""CIDs and the UnixFS importer/exporter against kubo/Helia reference vectors."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.ipfs.cid import (
    CODEC_DAG_PB,
    CODEC_RAW,
    Cid,
    CidError,
    base32_decode,
    base32_encode,
    cid_v1_raw,
    decode_varint,
    encode_varint,
    multihash_sha256,
    verify,
)
from node.ipfs.unixfs import (
    PROFILES,
    PBLink,
    PBNode,
    Profile,
    UnixfsData,
    UnixfsError,
    decode_pbnode,
    encode_pbnode,
    encode_unixfs_data,
    export_bytes,
    import_bytes,
    import_chunks,
    is_blob,
    iter_chunks,
)
from tests.conftest import VECTORS as SHARED_VECTORS

VECTORS = SHARED_VECTORS / "ipfs_cids.json"
INPUTS = {
    "hello": b"hello world\n",
    "empty": b"",
    "mib": bytes(i % 256 for i in range(1048576)),
}
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
HELLO_V1_RAW = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def _vectors() -> dict:
    if not VECTORS.is_file():
        pytest.skip(f"reference vectors not found at {VECTORS} (set MEDCHAIN_VECTORS to shared/vectors)")
    return json.loads(VECTORS.read_text())


def _cases() -> list[tuple[str, str]]:
    return [(p, i) for p in PROFILES for i in INPUTS]


# --- reference vectors -----------------------------------------------------------------------


def test_vector_profiles_match_ours() -> None:
    assert set(_vectors()["profiles"]) == set(PROFILES)


@pytest.mark.parametrize(("profile", "name"), _cases())
def test_vector_root_cid(profile: str, name: str) -> None:
    expected = _vectors()["profiles"][profile]["cids"][name]
    root, blocks = import_bytes(INPUTS[name], profile)
    assert str(root) == expected
    assert Cid.parse(expected) == root
    assert export_bytes(root, blocks.__getitem__) == INPUTS[name]


def test_vector_leaves() -> None:
    checked = 0
    for profile, entry in _vectors()["profiles"].items():
        for name, leaves in entry.get("leaves", {}).items():
            root, blocks = import_bytes(INPUTS[name], profile)
            node = decode_pbnode(blocks[root])
            assert [str(link.hash) for link in node.links] == leaves, (profile, name)
            for link in node.links:
                assert link.name == ""  # kubo and Helia write an empty Name
                assert link.tsize == len(blocks[link.hash])
                assert link.hash in blocks
            checked += 1
    assert checked


def test_vector_root_blocks_hex() -> None:
    entries = _vectors()["root_blocks_hex"]
    assert entries
    for key, hex_block in entries.items():
        profile, name = key.split("/")
        root, blocks = import_bytes(INPUTS[name], profile)
        assert blocks[root].hex() == hex_block, key
        assert str(root) == _vectors()["profiles"][profile]["cids"][name]


def test_kubo_default_mib_is_four_leaves_and_a_root() -> None:
    root, blocks = import_bytes(INPUTS["mib"], "kubo-default")
    assert len(blocks) == 2  # the four 256 KiB leaves are identical
    node = decode_pbnode(blocks[root])
    assert len(node.links) == 4 and root.version == 0


# --- round trips -----------------------------------------------------------------------------

SIZES = [0, 1, 262143, 262144, 262145, 3 * 1024 * 1024]


def _pattern(n: int) -> bytes:
    # Non-repeating content so that leaves differ.
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("size", SIZES)
def test_round_trip(profile: str, size: int) -> None:
    data = _pattern(size)
    root, blocks = import_bytes(data, profile)
    for cid, block in blocks.items():
        assert verify(cid, block)
    assert export_bytes(root, blocks.__getitem__) == data
    prof = PROFILES[profile]
    n_chunks = max(1, -(-size // prof.chunk_size))
    if n_chunks == 1 and (not prof.raw_leaves or prof.single_raw_leaf):
        assert len(blocks) == 1
    else:
        assert len(blocks) == n_chunks + 1
        assert root.codec == CODEC_DAG_PB


def test_balanced_layout_multi_level() -> None:
    prof = Profile(1, True, 4, 3, True)
    data = _pattern(4 * 10)  # 10 leaves, 3 per node -> 4 parents -> 2 -> root
    root, blocks = import_bytes(data, prof)
    assert export_bytes(root, blocks.__getitem__) == data

    def depths(cid: Cid, d: int = 0) -> list[int]:
        if cid.codec == CODEC_RAW:
            return [d]
        return [x for link in decode_pbnode(blocks[cid]).links for x in depths(link.hash, d + 1)]

    assert depths(root) == [3] * 10
    top = decode_pbnode(blocks[root])
    assert len(top.links) == 2
    assert len(decode_pbnode(blocks[top.links[0].hash]).links) == 3


def test_single_raw_leaf_off_wraps_leaf() -> None:
    prof = Profile(1, True, 16, 174, False)
    root, blocks = import_bytes(b"abc", prof)
    assert root.codec == CODEC_DAG_PB and len(blocks) == 2
    assert export_bytes(root, blocks.__getitem__) == b"abc"


def test_iter_chunks_streaming_matches_bytes() -> None:
    data = _pattern(1000)
    pieces = [data[i : i + 37] for i in range(0, len(data), 37)]
    assert list(iter_chunks(pieces, 64)) == list(iter_chunks(data, 64))
    assert list(iter_chunks([], 64)) == [b""]
    assert list(iter_chunks(b"", 64)) == [b""]
    prof = PROFILES["kubo-default"]
    assert import_chunks(iter_chunks(iter(pieces), prof.chunk_size), prof) == import_bytes(data, prof)


def test_profile_validation() -> None:
    with pytest.raises(ValueError):
        Profile(0, True, 1024, 174, True)
    with pytest.raises(ValueError):
        Profile(1, True, 0, 174, True)
    with pytest.raises(ValueError):
        import_bytes(b"x", "no-such-profile")


# --- tampering and malformed blocks ----------------------------------------------------------


def test_tampered_leaf_block_raises() -> None:
    for profile, prof in PROFILES.items():
        root, blocks = import_bytes(_pattern(3 * prof.chunk_size), profile)
        leaf = next(c for c in blocks if c != root)
        blocks[leaf] = blocks[leaf][:-1] + bytes([blocks[leaf][-1] ^ 1])
        with pytest.raises(CidError):
            export_bytes(root, blocks.__getitem__)


def test_tampered_root_block_raises() -> None:
    root, blocks = import_bytes(b"hello world\n", "kubo-default")
    blocks[root] = blocks[root].replace(b"hello", b"jello")
    with pytest.raises(CidError):
        export_bytes(root, blocks.__getitem__)


def _store(block: bytes) -> tuple[Cid, dict[Cid, bytes]]:
    cid = Cid(1, CODEC_DAG_PB, multihash_sha256(block))
    return cid, {cid: block}


@pytest.mark.parametrize(
    "block",
    [
        bytes.fromhex("0a04080218001200"),  # Links after Data
        bytes.fromhex("0a04080218000a0408021800"),  # Data twice
        bytes.fromhex("1a00"),  # unknown field 3
        bytes.fromhex("0a"),  # truncated key/length
        bytes.fromhex("0a05080218"),  # length past the end
        bytes.fromhex("0d00000000"),  # wire type 5
        bytes.fromhex("1200"),  # PBLink without Hash
        bytes.fromhex("12040a020102"),  # PBLink Hash is not a CID
        b"",  # no Data
        bytes.fromhex("0a020801"),  # UnixFS directory, not a file
        bytes.fromhex("0a021800"),  # UnixFS without Type
        bytes.fromhex("0a0808021203616263180a"),  # filesize disagrees with data
        bytes.fromhex("0a06080218002001"),  # blocksizes without links
        bytes.fromhex("0a0408ffffffffffffffffffff01"),  # varint over 10 bytes
    ],
)
def test_malformed_dag_pb_raises(block: bytes) -> None:
    cid, blocks = _store(block)
    with pytest.raises(UnixfsError):
        export_bytes(cid, blocks.__getitem__)


def test_blocksize_mismatch_raises() -> None:
    leaf = cid_v1_raw(b"abcd")
    meta = UnixfsData(2, filesize=5, blocksizes=(5,))
    block = encode_pbnode(PBNode((PBLink(leaf, "", 4),), encode_unixfs_data(meta)))
    root, blocks = _store(block)
    blocks[leaf] = b"abcd"
    with pytest.raises(UnixfsError):
        export_bytes(root, blocks.__getitem__)


# --- CIDs ------------------------------------------------------------------------------------


def test_known_cids() -> None:
    v0 = Cid.parse(HELLO_V0)
    assert v0.version == 0 and v0.codec == CODEC_DAG_PB and v0.to_bytes() == v0.multihash
    assert len(v0.digest) == 32 and str(v0) == HELLO_V0
    raw = cid_v1_raw(b"hello world\n")
    assert str(raw) == HELLO_V1_RAW and raw.digest == hashlib.sha256(b"hello world\n").digest()
    assert Cid.from_bytes(raw.to_bytes()) == raw
    assert raw.to_bytes()[:2] == b"\x01\x55"
    assert verify(raw, b"hello world\n") and not verify(raw, b"hello world!")
    assert str(v0.to_v1()).startswith("bafybei")


MH = multihash_sha256(b"x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Qm",
        HELLO_V0[:-1] + "0",  # '0' is not base58
        HELLO_V0[:-1] + "l",  # 'l' is not base58
        "zQmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",  # unsupported multibase
        "B" + HELLO_V1_RAW[1:].upper(),  # base32 upper is not accepted
        HELLO_V1_RAW[:-1] + "1",  # '1' is not base32
        HELLO_V1_RAW[:-1] + "5",  # non-zero trailing bits
        HELLO_V1_RAW[:-2],  # truncated digest
        HELLO_V1_RAW + "a",  # bad length / trailing bits
        HELLO_V1_RAW + "aa",  # trailing byte
        "b" + "a" * 300,  # too long
    ],
)
def test_malformed_cid_strings(text: str) -> None:
    with pytest.raises(CidError):
        Cid.parse(text)


def _b32(b: bytes) -> str:
    return "b" + base32_encode(b)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x02\x55" + MH, "version"),
        (b"\x03\x70" + MH, "version"),
        (b"\x01\x71" + MH, "codec"),
        (b"\x01\x55\x13\x20" + bytes(32), "multihash function"),
        (b"\x01\x55\x12\x1f" + bytes(31), "digest length"),
        (b"\x01\x55" + MH + b"\x00", "trailing"),
        (b"\x01\x55" + MH[:-1], "truncated"),
        (b"\x81\x00\x55" + MH, "non-minimal"),
        (b"\x01", "truncated varint"),
        (MH + b"\x00", "CIDv0"),
        (MH, "must be written in base58btc"),
    ],
)
def test_malformed_binary_cids(raw: bytes, message: str) -> None:
    with pytest.raises(CidError, match=message):
        Cid.parse(_b32(raw))
    if message != "must be written in base58btc":
        with pytest.raises(CidError, match=message):
            Cid.from_bytes(raw)


def test_binary_cid_length_limit() -> None:
    with pytest.raises(CidError, match="128"):
        Cid.from_bytes(b"\x01\x55" + MH + bytes(100))
    with pytest.raises(CidError):
        Cid.from_bytes(b"")


def test_invalid_cid_construction() -> None:
    with pytest.raises(CidError):
        Cid(0, CODEC_RAW, MH)
    with pytest.raises(CidError):
        Cid(2, CODEC_RAW, MH)
    with pytest.raises(CidError):
        Cid(1, 0x71, MH)
    with pytest.raises(CidError):
        Cid(1, CODEC_RAW, MH[:-1])


def test_base32_strictness() -> None:
    assert base32_decode("") == b""
    for bad in ("a", "abc", "abcdef", "A", "a="):
        with pytest.raises(CidError):
            base32_decode(bad)


# --- varints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (255, "ff01"),
        (300, "ac02"),
        (16384, "808001"),
        (2**63 - 1, "ffffffffffffffff7f"),
    ],
)
def test_varint_vectors(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("", "truncated"),
        ("80", "truncated"),
        ("ffff", "truncated"),
        ("8000", "non-minimal"),
        ("ff00", "non-minimal"),
        ("ffffffffffffffff8000", "longer than 9"),
        ("ffffffffffffffffff01", "longer than 9"),
    ],
)
def test_varint_rejects(encoded: str, message: str) -> None:
    with pytest.raises(CidError, match=message):
        decode_varint(bytes.fromhex(encoded))


def test_varint_encode_rejects() -> None:
    for bad in (-1, 2**63):
        with pytest.raises(CidError):
            encode_varint(bad)


def test_varint_offset() -> None:
    assert decode_varint(b"\xaa\xac\x02\x05", 1) == (300, 3)


# --- property tests --------------------------------------------------------------------------

_cids = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: Cid(0, CODEC_DAG_PB, b"\x12\x20" + d)),
    st.builds(
        lambda codec, d: Cid(1, codec, b"\x12\x20" + d),
        st.sampled_from([CODEC_RAW, CODEC_DAG_PB]),
        st.binary(min_size=32, max_size=32),
    ),
)


@given(_cids)
def test_cid_string_round_trip(cid: Cid) -> None:
    text = str(cid)
    assert Cid.parse(text) == cid
    assert text.startswith("Qm" if cid.version == 0 else "b")
    assert Cid.from_bytes(cid.to_bytes()) == cid


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + b"\xff") == (value, len(encoded))


@settings(max_examples=50, deadline=None)
@given(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=2, max_value=5),
    st.booleans(),
)
def test_import_export_round_trip(data: bytes, chunk: int, links: int, raw: bool) -> None:
    for prof in (Profile(1, raw, chunk, links, True), Profile(0, False, chunk, links, False)):
        root, blocks = import_bytes(data, prof)
        assert export_bytes(root, blocks.__getitem__) == data
        assert Cid.parse(str(root)) == root


def test_is_blob_checks_downloaded_bytes_against_raw_and_dag_pb_cids():
    """What a client checks a blob download with: the bytes a raw CID hashes, or a dag-pb root that a
    known import profile builds from them; a byte more, less or changed is not the blob."""
    small = b"s" * 1000
    assert is_blob(cid_v1_raw(small), small)
    big = bytes(range(256)) * 5000  # 1.25 MB: more than one chunk in every profile
    for profile in PROFILES:
        root, _ = import_bytes(big, profile)
        assert root.codec == CODEC_DAG_PB and is_blob(root, big), profile
        for other in (big[:-1], big + b"\x00", b"\x01" + big[1:]):
            assert not is_blob(root, other), profile
    for other in (small[:-1], small + b"s", b"t" + small[1:], b""):
        assert not is_blob(cid_v1_raw(small), other)
