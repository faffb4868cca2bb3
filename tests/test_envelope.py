"""The envelope's associated data binds a ciphertext to its on-chain record (devices/patient/envelope.py):
a window sealed for one record must not open under any other record's associated data."""

from __future__ import annotations

import hashlib
import hmac

import msgpack
import pytest

from devices.patient import envelope
from node.crypto import aead

KEY = bytes(range(32))
READINGS = [(1_700_000_000_000, 0x2A37, b"\x00\x48"), (1_700_000_001_000, 0x2A37, b"\x00\x49")]
# the record a window is sealed for: chain id, patient, data type, key epoch, window start and end
RECORD = ("medchain-test", b"\x01" * 32, 1, 2, 1_700_000_000_000, 1_700_000_060_000)
# each field of the record changed on its own: patient, type, epoch or window swapped
OTHERS = {
    "chain_id": ("medchain-other", *RECORD[1:]),
    "patient": (RECORD[0], b"\x02" * 32, *RECORD[2:]),
    "type": (*RECORD[:2], 3, *RECORD[3:]),
    "epoch": (*RECORD[:3], 3, *RECORD[4:]),
    "window_start": (*RECORD[:4], RECORD[4] + 1, RECORD[5]),
    "window_end": (*RECORD[:5], RECORD[5] + 60_000),
}


@pytest.mark.parametrize("pad_to", [0, 2048])
def test_window_opens_under_its_own_record(pad_to: int) -> None:
    blob = envelope.seal_window(KEY, envelope.aad(*RECORD), READINGS, pad_to)
    assert envelope.open_window(KEY, envelope.aad(*RECORD), blob) == READINGS


@pytest.mark.parametrize("field", sorted(OTHERS))
def test_window_does_not_open_under_another_records_associated_data(field: str) -> None:
    blob = envelope.seal_window(KEY, envelope.aad(*RECORD), READINGS)
    assert envelope.aad(*OTHERS[field]) != envelope.aad(*RECORD), f"the associated data ignores the {field}"
    with pytest.raises(aead.AeadError):
        envelope.open_window(KEY, envelope.aad(*OTHERS[field]), blob)


def test_swapped_nonce_or_short_blob_is_refused() -> None:
    ad = envelope.aad(*RECORD)
    blob = envelope.seal_window(KEY, ad, READINGS)
    with pytest.raises(aead.AeadError):
        envelope.open_window(KEY, ad, bytes([blob[0] ^ 1]) + blob[1:])
    with pytest.raises(aead.AeadError, match="^blob too short$"):
        envelope.open_window(KEY, ad, blob[: aead.NONCE_LEN + aead.TAG_LEN - 1])


# ---- the exact formats (a phone and a staff client of different versions must agree on them) --------

def test_associated_data_and_key_derivation_are_the_documented_formats() -> None:
    assert envelope.aad(*RECORD) == msgpack.packb(["medchain/blob/v1", *RECORD], use_bin_type=True)
    master = envelope.master_secret(b"\x07" * 32, "c")
    want_master = hmac.new(b"\x07" * 32, msgpack.packb(["medchain/data-master/v2", "c"]), hashlib.sha256).digest()
    assert master == want_master
    # the same patient key on another chain (a test network, a re-genesis) derives other data keys
    assert envelope.master_secret(b"\x07" * 32, "c2") != master
    want = hmac.new(master, msgpack.packb(["medchain/data-key/v1", 1, 2]), hashlib.sha256).digest()
    assert envelope.data_key(master, 1, 2) == want
    assert len({envelope.data_key(master, t, e) for t in (1, 2) for e in (0, 1)}) == 4


def _sealed(plaintext_obj: object) -> bytes:
    nonce = bytes(12)
    return nonce + aead.seal(KEY, nonce, msgpack.packb(plaintext_obj, use_bin_type=True), b"ad")


@pytest.mark.parametrize("obj", [[3, []], [0, []], [1, [], b"pad"], [2, []], [2, [], b"", b""]])
def test_unknown_versions_and_misplaced_padding_are_refused(obj: list) -> None:
    with pytest.raises(ValueError, match=f"^unknown envelope version {obj[0]}$"):
        envelope.open_window(KEY, b"ad", _sealed(obj))
    assert envelope.open_window(KEY, b"ad", _sealed([1, [[5, 6, b"f"]]])) == [(5, 6, b"f")]
    assert envelope.open_window(KEY, b"ad", _sealed([2, [[5, 6, b"f"]], bytes(9)])) == [(5, 6, b"f")]


def _padded_len_oracle(rows: list, pad_to: int) -> int:
    """The smallest multiple of pad_to that msgpack [2, rows, zeros] can be exactly, found by encoding."""
    base = len(msgpack.packb([2, rows, b""], use_bin_type=True)) - 2
    size = -(-(base + 2) // pad_to) * pad_to
    while not any(n >= 0 and len(msgpack.packb([2, rows, bytes(n)], use_bin_type=True)) == size
                  for n in (size - base - 2, size - base - 3, size - base - 5)):
        size += pad_to
    return size


# pad sizes around msgpack's bin8 / bin16 / bin32 boundaries (an empty window's base is 3 bytes),
# an exact fit (pad_to 5), and sizes whose header straddles a boundary (261, 65541)
PAD_SIZES = [1, 2, 5, 7, 64, 255, 256, *range(257, 263), 300, 2048, *range(65535, 65545), 70_000]


@pytest.mark.parametrize("pad_to", PAD_SIZES)
@pytest.mark.parametrize("n_rows", [0, 1, 3])
def test_padding_is_the_smallest_multiple_that_fits(pad_to: int, n_rows: int) -> None:
    rows = [(1_700_000_000_000 + i, 0x2A37, b"\x00\x48") for i in range(n_rows)]
    out = envelope.padded_plaintext(rows, pad_to)
    assert len(out) == _padded_len_oracle([list(r) for r in rows], pad_to) and len(out) % pad_to == 0
    ver, got, zeros = msgpack.unpackb(out)
    assert ver == 2 and [tuple(r) for r in got] == rows and zeros == bytes(len(zeros))


@pytest.mark.parametrize("pad_to,version", [(None, 1), (0, 1), (1, 2), (64, 2)])
def test_windows_are_padded_only_when_asked(pad_to: int | None, version: int) -> None:
    ad = envelope.aad(*RECORD)
    blob = envelope.seal_window(KEY, ad, READINGS) if pad_to is None else envelope.seal_window(KEY, ad, READINGS, pad_to)
    plain = msgpack.unpackb(aead.open_(KEY, blob[: aead.NONCE_LEN], blob[aead.NONCE_LEN:], ad))
    assert plain[0] == version and len(plain) == version + 1
    assert envelope.open_window(KEY, ad, blob) == READINGS
