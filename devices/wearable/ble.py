"""A BLE link model for a wearable (the GATT server) notifying a phone: time, bytes on air, energy.

Pure and deterministic: the analytic figures take no randomness; `Link` draws packet losses from
its own seeded random.Random, so a fleet run is replayable.

What travels (Bluetooth Core 5.x, LE 1M PHY, 1 bit/us = 8 us per byte):
  LL packet   = preamble 1 + access address 4 + LL header 2 + payload + MIC 4 (encrypted link) + CRC 3
  LL payload  = L2CAP header 4 + ATT PDU, fragmented into pieces of at most `ll_payload` bytes
                (27 without Data Length Extension, up to 251 with it)
  ATT notify  = opcode 1 + handle 2 + value; the value must fit ATT_MTU - 3 (notifications are
                never split at the ATT layer)
In each connection event the central (phone) sends first (an empty packet when it has nothing),
the peripheral answers T_IFS = 150 us later with the notification (or an empty packet); more
fragments alternate the same way. A packet that is lost (not acknowledged) is sent again at the
next connection event: the link layer is reliable, so loss costs time and energy, not readings,
unless the supervision timeout passes without success (then the link drops; counted).

Energy: the peripheral's radio and CPU time per connection event times the named radio's currents.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

LL_OVERHEAD = 1 + 4 + 2 + 3  # preamble, access address, LL header, CRC
MIC = 4  # on an encrypted link (health data is always paired/encrypted)
L2CAP_HEADER = 4
ATT_NOTIFY_HEADER = 3  # opcode + attribute handle
US_PER_BYTE_1M = 8.0
T_IFS_US = 150.0


@dataclass(frozen=True)
class Radio:
    """Supply voltage and currents of a BLE SoC (what the energy figures are multiplied by)."""

    name: str
    volts: float
    tx_ma: float  # radio transmitting
    rx_ma: float  # radio receiving
    cpu_ma: float  # CPU running (stack processing of a connection event)
    sleep_ua: float  # System ON idle with the RTC running between events
    ramp_us: float  # radio ramp-up before each RX/TX (TXEN/RXEN)
    cpu_us_per_event: float  # stack CPU time per connection event (assumption, not a datasheet figure)
    sca_ppm: float  # sleep clock accuracy of both ends combined (receive-window widening)


# Nordic nRF52840 Product Specification v1.7, section 5.2 "Current consumption" / 6.20 RADIO, at
# VDD = 3 V with the DC/DC regulator on: TX at 0 dBm 4.8 mA (I_TX,0dBM,DCDC), RX at 1 Mbit/s
# 4.6 mA (I_RX,1M,DCDC), CPU running CoreMark from flash at 64 MHz 3.3 mA (I_CPU,FLASH,DCDC),
# System ON with RTC wake and RAM retained ~1.5 uA, radio ramp-up 140 us in the default (not fast)
# mode (t_TXEN, t_RXEN). The 100 us of SoftDevice CPU per event and the 50 + 20 ppm clocks are
# our assumptions, stated so they can be changed.
NRF52840 = Radio("nRF52840 (0 dBm, DC/DC, 3 V)", 3.0, 4.8, 4.6, 3.3, 1.5, 140.0, 100.0, 70.0)
RADIOS = {"nrf52840": NRF52840}


@dataclass(frozen=True)
class LinkParams:
    interval_ms: float = 30.0  # connection interval (7.5 ms .. 4 s in 1.25 ms steps)
    att_mtu: int = 23  # default ATT MTU; 247 after an MTU exchange
    ll_payload: int = 27  # max LL payload (27; 251 with Data Length Extension)
    loss: float = 0.02  # probability that one attempt (packet or its acknowledgement) is lost
    slave_latency: int = 0  # events the peripheral may skip when it has nothing to send
    supervision_ms: float = 4000.0  # link drops if nothing gets through for this long
    encrypted: bool = True
    radio: Radio = NRF52840

    def __post_init__(self) -> None:
        if not 7.5 <= self.interval_ms <= 4000.0:
            raise ValueError(f"connection interval {self.interval_ms} ms outside 7.5..4000 ms")
        if not 23 <= self.att_mtu <= 517:
            raise ValueError(f"ATT MTU {self.att_mtu} outside 23..517")
        if not 27 <= self.ll_payload <= 251:
            raise ValueError(f"LL payload {self.ll_payload} outside 27..251")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss {self.loss} must be in [0, 1)")
        if self.slave_latency < 0:
            raise ValueError("slave latency must be >= 0")


def fragments(value_len: int, p: LinkParams) -> list[int]:
    """LL payload sizes carrying one notification of value_len bytes."""
    if value_len > p.att_mtu - ATT_NOTIFY_HEADER:
        raise ValueError(f"a {value_len}-byte value does not fit a notification with ATT MTU {p.att_mtu}")
    pdu = L2CAP_HEADER + ATT_NOTIFY_HEADER + value_len
    n = math.ceil(pdu / p.ll_payload)
    return [min(p.ll_payload, pdu - i * p.ll_payload) for i in range(n)]


def packet_bytes(payload: int, p: LinkParams) -> int:
    """Bytes on air of one LL packet (an empty packet is payload 0, no MIC)."""
    return LL_OVERHEAD + payload + (MIC if p.encrypted and payload else 0)


def notification_bytes(value_len: int, p: LinkParams) -> int:
    """Bytes the peripheral puts on air for one notification (one attempt, all fragments)."""
    return sum(packet_bytes(f, p) for f in fragments(value_len, p))


def _event_energy_uj(tx_payloads: list[int], p: LinkParams) -> float:
    """Energy of one connection event in which the peripheral sends these LL payloads (0 = empty)."""
    r = p.radio
    widening = 16.0 + r.sca_ppm * 1e-6 * p.interval_ms * 1000 * (p.slave_latency + 1)
    empty_us = packet_bytes(0, p) * US_PER_BYTE_1M
    rx_us = tx_us = 0.0
    for i, pay in enumerate(tx_payloads):
        # receive the central's packet (after ramp-up and the widened window on the first one),
        # turn around in T_IFS, send ours; charge T_IFS at the TX current (the TX ramp sits in it)
        rx_us += empty_us + (r.ramp_us + widening if i == 0 else 0.0)
        tx_us += T_IFS_US + packet_bytes(pay, p) * US_PER_BYTE_1M
        if i:
            rx_us += T_IFS_US  # the gap before the central's next packet
    e_ma_us = rx_us * r.rx_ma + tx_us * r.tx_ma + r.cpu_us_per_event * r.cpu_ma
    return e_ma_us * r.volts * 1e-3  # mA * us * V = nJ; * 1e-3 = uJ


def empty_event_uj(p: LinkParams) -> float:
    """A connection event with nothing to send (the peripheral answers with an empty packet)."""
    return _event_energy_uj([0], p)


def expected_attempts(p: LinkParams) -> float:
    return 1.0 / (1.0 - p.loss)


def reading_energy_uj(value_len: int, p: LinkParams) -> float:
    """Expected radio + stack energy of the connection event(s) that carry one notification,
    retransmissions included (each attempt is a connection event)."""
    return _event_energy_uj(fragments(value_len, p), p) * expected_attempts(p)


@dataclass(frozen=True)
class DailyEnergy:
    readings_per_day: float
    bytes_on_air_per_reading: float  # peripheral TX, retransmissions included
    uj_per_reading: float
    j_per_day: float  # data events + idle events + sleep
    j_per_day_radio_data: float
    j_per_day_idle_events: float
    j_per_day_sleep: float
    avg_current_ua: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def daily_energy(value_len: int, period_ms: float, p: LinkParams) -> DailyEnergy:
    """A wearable notifying a value_len-byte frame every period_ms, for one day."""
    day_s = 86_400.0
    readings = day_s * 1000.0 / period_ms
    e_read = reading_energy_uj(value_len, p)
    events_per_day = day_s * 1000.0 / (p.interval_ms * (p.slave_latency + 1))
    idle_events = max(0.0, events_per_day - readings * expected_attempts(p))
    j_data = readings * e_read * 1e-6
    j_idle = idle_events * empty_event_uj(p) * 1e-6
    j_sleep = p.radio.sleep_ua * 1e-6 * p.radio.volts * day_s
    total = j_data + j_idle + j_sleep
    return DailyEnergy(readings, notification_bytes(value_len, p) * expected_attempts(p), e_read, total,
                       j_data, j_idle, j_sleep, total / (p.radio.volts * day_s) * 1e6)


class Link:
    """One wearable's link to its phone: when each notification arrives, with seeded losses.

    The connection's anchor points are phase + k * interval; a frame produced at t waits for the
    next anchor, and each lost attempt costs one more interval."""

    def __init__(self, params: LinkParams, seed: str | int) -> None:
        self.p = params
        self.rng = random.Random(f"ble|{seed}")
        self.phase_ms = self.rng.uniform(0.0, params.interval_ms)
        self.notifications = 0
        self.attempts = 0
        self.bytes_on_air = 0
        self.dropped = 0  # supervision timeouts (the reading is then lost: none expected)
        self.energy_uj = 0.0
        self._cost: dict[int, tuple[int, float]] = {}  # value length -> (bytes on air, event energy)

    def deliver(self, t_ms: float, value_len: int) -> float | None:
        """Arrival time at the phone of a frame produced at t_ms, or None if the link dropped."""
        p = self.p
        k = math.ceil((t_ms - self.phase_ms) / p.interval_ms)
        anchor = self.phase_ms + k * p.interval_ms
        cost = self._cost.get(value_len)
        if cost is None:  # a handful of frame sizes per device: compute each once
            frags = fragments(value_len, p)
            cost = self._cost[value_len] = (sum(packet_bytes(f, p) for f in frags), _event_energy_uj(frags, p))
        on_air, e_event = cost
        self.notifications += 1
        tries = 0
        while True:
            tries += 1
            self.attempts += 1
            self.bytes_on_air += on_air
            self.energy_uj += e_event
            if self.rng.random() >= p.loss:
                return anchor + (tries - 1) * p.interval_ms + 1.0  # ~1 ms to the end of the event
            if tries * p.interval_ms >= p.supervision_ms:
                self.dropped += 1
                return None
