"""Metadata privacy: a phone that uploads every slot of a fixed schedule with padded ciphertexts
leaks neither when readings happened nor how many there were (real validator process)."""

from __future__ import annotations

import pytest

from devices.patient import envelope
from devices.patient.client import NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.wearable.wearables import make_wearable
from node.crypto import aead
from node.crypto.keys import Identity
from tests.conftest import run

PERIOD = 60_000


def test_padding_sizes_and_round_trip():
    key, ad = bytes(32), b"ad"
    hr = list(make_wearable("heart_rate", "w", 1).frames_between(0, 60_000))
    sizes = {len(envelope.seal_window(key, ad, rows, pad_to=2048)) for rows in ([], hr[:1], hr[:30], hr)}
    assert len(sizes) == 1  # one size whatever the window holds
    blob = envelope.seal_window(key, ad, hr, pad_to=2048)
    assert envelope.open_window(key, ad, blob) == hr and envelope.open_window(key, ad, envelope.seal_window(
        key, ad, [], pad_to=2048)) == []
    big = hr * 40  # more than one pad unit: the next multiple
    assert (len(envelope.seal_window(key, ad, big, pad_to=2048)) - aead.NONCE_LEN - aead.TAG_LEN) % 2048 == 0
    assert len({len(envelope.seal_window(key, ad, r)) for r in ([], hr[:1], hr)}) == 3  # unpadded: sizes leak


def test_fixed_schedule_on_chain(node, genesis):
    async def go():
        async with NodeClient(node.url) as c:
            pat, doc = Identity.from_seed(b"priv-patient"), Identity.from_seed(b"priv-doctor")
            phone = Phone(pat, c, genesis.chain_id, genesis.validator_keys, pad_to=2048)
            staff = Staff(doc, c, genesis.chain_id)
            await staff.register("Dr. P", "physician", "org")
            await phone.grant(doc.address, ["heart_rate"])
            start = 1_700_000_040_000 // PERIOD * PERIOD
            hr = list(make_wearable("heart_rate", "w", 2).frames_between(start, start + PERIOD))
            slots = [hr, [], hr[10:15]]  # busy, quiet, a few readings
            for k, rows in enumerate(slots):
                shifted = [(t + k * PERIOD, u, f) for t, u, f in rows]
                await phone.write_slot("heart_rate", shifted, start + k * PERIOD, PERIOD)
            recs = (await c.data(pat.address))["data"]
            assert [(r["t_start_ms"], r["t_end_ms"]) for r in recs] == [
                (start + k * PERIOD, start + (k + 1) * PERIOD - 1) for k in range(3)]
            assert len({r["size"] for r in recs}) == 1  # equal sizes on chain and in the block store
            wins = await staff.read(pat.address, "heart_rate")
            assert [len(w.readings) for w in wins] == [len(s) for s in slots]
            with pytest.raises(ValueError, match="outside the slot"):
                await phone.write_slot("heart_rate", hr, start + PERIOD, PERIOD)
            with pytest.raises(ValueError, match="multiples"):
                await phone.write_slot("heart_rate", [], start + 1, PERIOD)

    run(go())
