"""The envelope's associated data binds a ciphertext to its on-chain record (devices/envelope.py):
a window sealed for one record must not open under any other record's associated data."""

from __future__ import annotations

import pytest

from devices import envelope
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
    with pytest.raises(aead.AeadError, match="too short"):
        envelope.open_window(KEY, ad, blob[: aead.NONCE_LEN + aead.TAG_LEN - 1])
