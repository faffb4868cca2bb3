"""The BLE link model: bytes on air, fragmentation, energy bookkeeping, seeded losses."""

from __future__ import annotations

import pytest

from devices.wearable import ble
from devices.wearable.wearables import DEFAULT_PERIOD_MS, make_wearable


def test_bytes_on_air_follow_the_spec():
    p = ble.LinkParams()
    # a 4-byte heart-rate value: L2CAP 4 + ATT 3 + 4 = 11-byte LL payload, + 10 LL overhead + 4 MIC
    assert ble.fragments(4, p) == [11]
    assert ble.notification_bytes(4, p) == 25
    assert ble.packet_bytes(0, p) == 10  # empty packet: no MIC
    assert ble.notification_bytes(4, ble.LinkParams(encrypted=False)) == 21


def test_mtu_and_fragmentation():
    with pytest.raises(ValueError, match="does not fit"):
        ble.fragments(21, ble.LinkParams())  # 23-byte MTU leaves 20 bytes of value
    big = ble.LinkParams(att_mtu=247)
    assert ble.fragments(100, big) == [27, 27, 27, 26]  # 107-byte L2CAP PDU over 27-byte LL payloads
    assert ble.fragments(100, ble.LinkParams(att_mtu=247, ll_payload=251)) == [107]
    # one packet instead of four costs less energy (fewer turnarounds and overheads)
    assert ble.reading_energy_uj(100, ble.LinkParams(att_mtu=247, ll_payload=251)) < ble.reading_energy_uj(100, big)
    with pytest.raises(ValueError):
        ble.LinkParams(interval_ms=5)
    with pytest.raises(ValueError):
        ble.LinkParams(loss=1.0)


def test_energy_grows_with_bytes_loss_and_rate():
    p = ble.LinkParams()
    assert ble.reading_energy_uj(19, p) > ble.reading_energy_uj(4, p) > ble.empty_event_uj(p) > 0
    lossy = ble.LinkParams(loss=0.5)
    assert ble.reading_energy_uj(4, lossy) == pytest.approx(2 * ble.reading_energy_uj(4, ble.LinkParams(loss=0.0)))
    d1, d60 = ble.daily_energy(4, 1000, p), ble.daily_energy(13, 60_000, p)
    assert d1.readings_per_day == 86_400 and d60.readings_per_day == 1_440
    assert d1.j_per_day > d60.j_per_day > d60.j_per_day_sleep > 0
    assert d1.j_per_day == pytest.approx(d1.j_per_day_radio_data + d1.j_per_day_idle_events + d1.j_per_day_sleep)
    # slave latency lets an idle peripheral skip events: less energy per day for a sparse sensor
    assert ble.daily_energy(13, 60_000, ble.LinkParams(slave_latency=4)).j_per_day < d60.j_per_day
    # sanity: tens of microjoules per 30 ms event on an nRF52840, tens of microamps on average
    assert 1 < ble.empty_event_uj(p) < 20 and 10 < d1.avg_current_ua < 1000


def test_link_is_seeded_and_reliable():
    p = ble.LinkParams(loss=0.2)
    a, b = ble.Link(p, "w1"), ble.Link(p, "w1")
    ta = [a.deliver(t * 1000.0, 4) for t in range(500)]
    assert ta == [b.deliver(t * 1000.0, 4) for t in range(500)]
    assert all(t is not None and t >= s * 1000.0 for s, t in enumerate(ta))
    assert a.dropped == 0 and a.notifications == 500 and a.attempts > 500
    assert a.attempts / a.notifications == pytest.approx(1 / 0.8, rel=0.15)
    assert a.bytes_on_air == a.attempts * 25


def test_every_wearable_frame_fits_the_default_mtu():
    p = ble.LinkParams()
    for kind in DEFAULT_PERIOD_MS:
        w = make_wearable(kind, "d", 1)
        for i in range(50):
            _, frame = w.next_frame(i * w.period_ms)
            assert ble.notification_bytes(len(frame), p) <= 41
