"""Emulated wearables: plausible physiological signals, sent as real GATT measurement frames.

Each device draws from its own random.Random seeded by (kind, device_id, seed), so a run is reproducible
and two devices with the same seed still differ. Signals are bounded mean-reverting random walks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

from devices.wearable.gatt import (
    UUID_BY_KIND,
    BloodPressureMeasurement,
    DateTime,
    GlucoseMeasurement,
    Reading,
    TemperatureMeasurement,
    decode,
    heart_rate_frame,
    plx_frame,
)

DEFAULT_PERIOD_MS: dict[str, int] = {
    "heart_rate": 1_000, "spo2": 1_000, "body_temperature": 60_000,
    "blood_pressure": 300_000, "glucose": 300_000,
}
DAY_MS = 86_400_000


class _Walk:
    """Mean-reverting random walk clamped to [lo, hi]; pull sets how fast it returns to its target."""

    def __init__(self, rng: random.Random, lo: float, hi: float, target: float, sigma: float,
                 pull: float) -> None:
        self.rng, self.lo, self.hi, self.target, self.sigma, self.pull = rng, lo, hi, target, sigma, pull
        self.x = min(hi, max(lo, rng.gauss(target, sigma)))

    def step(self, target: float | None = None) -> float:
        x = self.x
        x += self.pull * ((self.target if target is None else target) - x) + self.rng.gauss(0.0, self.sigma)
        x = self.hi if x > self.hi else self.lo if x < self.lo else x  # min/max calls cost more
        self.x = x
        return x


class Wearable:
    """A device that measures one kind every period_ms and notifies (uuid, frame)."""

    def __init__(self, kind: str, device_id: str, seed: int, period_ms: int | None = None) -> None:
        if kind not in UUID_BY_KIND:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(UUID_BY_KIND)}")
        period = DEFAULT_PERIOD_MS[kind] if period_ms is None else period_ms
        if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
            raise ValueError(f"period_ms must be a positive int, got {period_ms!r}")
        self.kind, self.device_id, self.seed, self.period_ms = kind, device_id, seed, period
        self.uuid = UUID_BY_KIND[kind]
        # A string seed is hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED.
        self.rng = random.Random(f"{kind}|{device_id}|{seed}")
        self.frames_sent = 0

    def next_frame(self, now_ms: int) -> tuple[int, bytes]:
        """Take one measurement at now_ms and return its notification (characteristic uuid, frame)."""
        frame = self._measure(now_ms)
        self.frames_sent += 1
        return self.uuid, frame

    def frames_between(self, start_ms: int, end_ms: int) -> Iterator[tuple[int, int, bytes]]:
        """(time_ms, uuid, frame) for every period tick in [start_ms, end_ms)."""
        for t in range(start_ms, end_ms, self.period_ms):
            uuid, frame = self.next_frame(t)
            yield t, uuid, frame

    def readings_between(self, start_ms: int, end_ms: int) -> Iterator[Reading]:
        """Decoded readings for every period tick in [start_ms, end_ms), via the real frame format."""
        for t, uuid, frame in self.frames_between(start_ms, end_ms):
            yield decode(uuid, frame, t)

    def _measure(self, now_ms: int) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(device_id={self.device_id!r}, seed={self.seed!r}, "
                f"period_ms={self.period_ms})")


class HeartRateMonitor(Wearable):
    """Chest strap: 55-110 bpm with rest/activity phases, RR intervals and periodic energy expended."""

    def __init__(self, device_id: str, seed: int, period_ms: int | None = None) -> None:
        super().__init__("heart_rate", device_id, seed, period_ms)
        self.rest = self.rng.uniform(62.0, 78.0)
        self.active = False
        self.hr = _Walk(self.rng, 55.0, 110.0, self.rest, 1.2, 0.03)
        self.beat_phase = self.rng.random()
        self.energy_kj = 0.0

    def _measure(self, now_ms: int) -> bytes:
        if self.rng.random() < 0.002:  # switch between rest and activity every few minutes on average
            self.active = not self.active
        hr = self.hr.step(self.rest + 25.0 if self.active else self.rest)
        period_s = self.period_ms / 1000
        # Beats completed during this period; each gets an RR interval with ~3% beat-to-beat variability.
        self.beat_phase += period_s * hr / 60
        beats = int(self.beat_phase)
        self.beat_phase -= beats
        rr = [round(60 / hr * 1024 * (1 + max(-0.1, min(0.1, self.rng.gauss(0, 0.03)))))
              for _ in range(beats)]
        self.energy_kj = min(65535.0, self.energy_kj + period_s * max(0.05, 0.08 + (hr - 70) * 0.005))
        # Per the Heart Rate Service, energy expended goes out about every 10th notification; a 23-byte ATT
        # MTU then leaves room for 8 RR intervals (9 without it), so the oldest are dropped.
        ee = int(self.energy_kj) if self.frames_sent % 10 == 0 else None
        keep = 8 if ee is not None else 9
        # in range by construction (55-110 bpm, RR below 1,300, energy capped): the unchecked encoder
        return heart_rate_frame(round(hr), True, ee, tuple(rr[-keep:]))


class BloodPressureMonitor(Wearable):
    """Upper-arm cuff: systolic 100-150, diastolic 60-95 mmHg, MAP, pulse, time stamp and status."""

    def __init__(self, device_id: str, seed: int, period_ms: int | None = None, user_id: int = 1) -> None:
        super().__init__("blood_pressure", device_id, seed, period_ms)
        self.user_id = user_id
        self.sys = _Walk(self.rng, 100.0, 150.0, self.rng.uniform(112.0, 132.0), 5.0, 0.3)
        self.dia = _Walk(self.rng, 60.0, 95.0, self.rng.uniform(70.0, 84.0), 3.0, 0.3)
        self.pulse = _Walk(self.rng, 55.0, 110.0, self.rng.uniform(62.0, 80.0), 4.0, 0.3)

    def _measure(self, now_ms: int) -> bytes:
        sys_ = round(self.sys.step())
        dia = min(round(self.dia.step()), sys_ - 25)  # keep a physiological pulse pressure
        mean = round(dia + (sys_ - dia) / 3, 1)
        status = 0x0004 if self.rng.random() < 0.01 else 0  # occasional irregular-pulse flag
        pulse = round(self.pulse.step())
        return BloodPressureMeasurement(sys_, dia, mean, False, DateTime.from_ms(now_ms), pulse, self.user_id,
                                        status).encode()


class Thermometer(Wearable):
    """Armpit patch: 36.1-37.8 Cel with a daily rhythm, 0.01 Cel resolution, as IEEE-11073 FLOAT."""

    def __init__(self, device_id: str, seed: int, period_ms: int | None = None) -> None:
        super().__init__("body_temperature", device_id, seed, period_ms)
        self.base = self.rng.uniform(36.5, 37.0)
        self.temp = _Walk(self.rng, 36.1, 37.8, self.base, 0.03, 0.05)

    def _measure(self, now_ms: int) -> bytes:
        # Core temperature peaks in the late afternoon and bottoms out before dawn (~0.5 Cel swing).
        circadian = 0.25 * math.sin(2 * math.pi * ((now_ms % DAY_MS) / DAY_MS - 0.375))
        value = round(self.temp.step(self.base + circadian), 2)
        return TemperatureMeasurement(value, False, DateTime.from_ms(now_ms), 1).encode()


class GlucoseMeter(Wearable):
    """Glucose sensor: 70-180 mg/dL with meal excursions, sent in kg/L like real meters."""

    def __init__(self, device_id: str, seed: int, period_ms: int | None = None) -> None:
        super().__init__("glucose", device_id, seed, period_ms)
        self.base = _Walk(self.rng, 70.0, 150.0, self.rng.uniform(88.0, 110.0), 3.0, 0.05)
        self.meal = 0.0
        self.sequence = 0

    def _measure(self, now_ms: int) -> bytes:
        self.meal *= 0.85  # a meal's excursion fades over roughly an hour at 5-minute samples
        if self.rng.random() < 0.02:
            self.meal += self.rng.uniform(30.0, 60.0)
        mg_dl = round(min(180.0, max(70.0, self.base.step() + self.meal)))
        seq, self.sequence = self.sequence, (self.sequence + 1) & 0xFFFF
        # n mg/dL is exactly the SFLOAT n x 10^-5 kg/L, so the gateway recovers n exactly.
        return GlucoseMeasurement(seq, DateTime.from_ms(now_ms), concentration=mg_dl / 100_000,
                                  sample_type=1, sample_location=1, sensor_status=0).encode()


class PulseOximeter(Wearable):
    """Finger clip: SpO2 93-100 %, pulse 55-110 /min, perfusion index, measurement-ongoing status."""

    def __init__(self, device_id: str, seed: int, period_ms: int | None = None) -> None:
        super().__init__("spo2", device_id, seed, period_ms)
        self.spo2 = _Walk(self.rng, 93.0, 100.0, self.rng.uniform(96.0, 98.5), 0.4, 0.1)
        self.pulse = _Walk(self.rng, 55.0, 110.0, self.rng.uniform(62.0, 80.0), 1.2, 0.03)
        self.pai = _Walk(self.rng, 0.5, 10.0, self.rng.uniform(2.0, 6.0), 0.1, 0.05)

    def _measure(self, now_ms: int) -> bytes:
        # Status 0x0020 = "measurement ongoing", as a continuous oximeter reports while clipped on.
        return plx_frame(round(self.spo2.step()), round(self.pulse.step()), measurement_status=0x0020,
                         pai=round(self.pai.step(), 1))


# Subclasses fix their kind, so they are built from (device_id, seed, period_ms).
WEARABLE_BY_KIND: dict[str, Callable[[str, int, int | None], Wearable]] = {
    "heart_rate": HeartRateMonitor, "blood_pressure": BloodPressureMonitor, "body_temperature": Thermometer,
    "glucose": GlucoseMeter, "spo2": PulseOximeter,
}


def make_wearable(kind: str, device_id: str, seed: int, period_ms: int | None = None) -> Wearable:
    """The emulated device for a kind, with its typical period unless period_ms is given."""
    try:
        cls = WEARABLE_BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(WEARABLE_BY_KIND)}") from None
    return cls(device_id, seed, period_ms)
