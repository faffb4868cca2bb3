"""Bluetooth GATT health measurement characteristics: encoders and strict decoders.

Formats follow the Bluetooth GATT Specification Supplement. All multi-byte fields are little-endian.
Frames come from untrusted radios, so every decoder checks length, flags and reserved values and
reports problems only as GattError (a ValueError), never as IndexError or struct.error.
"""

from __future__ import annotations

import calendar
import functools
import math
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

HEART_RATE_MEASUREMENT = 0x2A37
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
TEMPERATURE_MEASUREMENT = 0x2A1C
GLUCOSE_MEASUREMENT = 0x2A18
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F

UUID_BY_KIND: dict[str, int] = {
    "heart_rate": HEART_RATE_MEASUREMENT, "blood_pressure": BLOOD_PRESSURE_MEASUREMENT,
    "body_temperature": TEMPERATURE_MEASUREMENT, "glucose": GLUCOSE_MEASUREMENT,
    "spo2": PLX_CONTINUOUS_MEASUREMENT,
}
KIND_BY_UUID: dict[int, str] = {uuid: kind for kind, uuid in UUID_BY_KIND.items()}
# Unit of Reading.values per kind (UCUM codes); glucose sent in mol/L is reported in "mmol/L" instead.
UNIT_BY_KIND: dict[str, str] = {"heart_rate": "/min", "blood_pressure": "mm[Hg]", "body_temperature": "Cel",
                                "glucose": "mg/dL", "spo2": "%"}

# Raw IEEE-11073 special values (all at exponent 0). NRes ("not at this resolution") decodes to nan like NaN.
SFLOAT_NAN, SFLOAT_NRES, SFLOAT_RESERVED = 0x07FF, 0x0800, 0x0801
SFLOAT_POS_INF, SFLOAT_NEG_INF = 0x07FE, 0x0802
FLOAT_NAN, FLOAT_NRES, FLOAT_RESERVED = 0x007FFFFF, 0x00800000, 0x00800001
FLOAT_POS_INF, FLOAT_NEG_INF = 0x007FFFFE, 0x00800002

MMHG_PER_KPA = 1 / 0.133322387415


class GattError(ValueError):
    """A frame that is not a valid measurement, or a value that cannot be encoded."""


@dataclass(frozen=True)
class Reading:
    """A decoded measurement in canonical units, as stored on the chain."""

    kind: str
    time_ms: int
    values: dict[str, float]
    unit: str


# --- IEEE-11073 SFLOAT (4-bit exponent, 12-bit mantissa) and FLOAT (8-bit exponent, 24-bit mantissa) ---

def _med_decode(raw: int, mbits: int, ebits: int, what: str) -> float:
    if not isinstance(raw, int) or not 0 <= raw < 1 << (mbits + ebits):
        raise GattError(f"{what}: raw value {raw!r} out of range")
    half = 1 << (mbits - 1)
    if raw >> mbits == 0 and half - 2 <= raw <= half + 2:
        if raw == half + 1:
            raise GattError(f"{what}: reserved special value 0x{raw:0{(mbits + ebits) // 4}X}")
        return {half - 2: math.inf, half - 1: math.nan, half: math.nan, half + 2: -math.inf}[raw]
    m = raw & ((1 << mbits) - 1)
    m -= (m & half) << 1
    e = raw >> mbits
    e -= (e & (1 << (ebits - 1))) << 1
    # Integer arithmetic: int / int is correctly rounded, so equal decimals give identical floats.
    return float(m * 10**e) if e >= 0 else m / 10**-e


def _med_encode(value: float, mbits: int, ebits: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GattError(f"{what}: expected a number, got {value!r}")
    half = 1 << (mbits - 1)
    if math.isnan(value):
        return half - 1
    if math.isinf(value):
        return half - 2 if value > 0 else half + 2
    raw = _med_raw(value, type(value), mbits, ebits)
    if raw is None:
        raise GattError(f"{what}: {value!r} is too large to encode")
    return raw


@functools.lru_cache(maxsize=8192)
def _med_raw(value: float, _kind: type, mbits: int, ebits: int) -> int | None:
    """The encoding of a finite number, None if too large. Cached: emulated devices send the same
    few hundred rounded values again and again, and the search below costs ~5 us (the key holds the
    type, as an int and an equal float may round apart at large exponents)."""
    half = 1 << (mbits - 1)
    emin, emax = -(1 << (ebits - 1)), (1 << (ebits - 1)) - 1
    start = emin if value == 0 else max(emin, math.floor(math.log10(abs(value))) - len(str(half)))
    for e in range(start, emax + 1):  # the first exponent whose mantissa fits keeps the most precision
        m = round(value * 10**-e) if e < 0 else round(value / 10**e)
        # At exponent 0, mantissas +-(half-2 .. half) are the special values; other exponents use all.
        if (-half <= m < half) if e else abs(m) <= half - 3:
            break
    else:
        return None
    while m and m % 10 == 0 and e < 0:  # shortest form, so 114 encodes as 0x0072 rather than 1140e-1
        m //= 10
        e += 1
    if m == 0:
        e = 0
    return ((e & ((1 << ebits) - 1)) << mbits) | (m & ((1 << mbits) - 1))


def decode_sfloat(raw: int) -> float:
    """16-bit SFLOAT to float; NaN/NRes give nan, +-INF give +-inf, the reserved 0x0801 is an error."""
    return _med_decode(raw, 12, 4, "SFLOAT")


def encode_sfloat(value: float) -> int:
    """float to 16-bit SFLOAT with the most precision that fits; nan/+-inf map to NaN/+-INF."""
    return _med_encode(value, 12, 4, "SFLOAT")


def decode_float(raw: int) -> float:
    """32-bit FLOAT to float; NaN/NRes give nan, +-INF give +-inf, the reserved 0x00800001 is an error."""
    return _med_decode(raw, 24, 8, "FLOAT")


def encode_float(value: float) -> int:
    """float to 32-bit FLOAT with the most precision that fits; nan/+-inf map to NaN/+-INF."""
    return _med_encode(value, 24, 8, "FLOAT")


def _scale(value: float, factor: str) -> float:
    # Via the shortest decimal repr: 0.00112 kg/L becomes exactly 112.0 mg/dL, not 112.00000000000001.
    return float(Decimal(repr(value)) * Decimal(factor))


# --- Date Time (0x2A08): year uint16, month, day, hours, minutes, seconds; 0 = unknown year/month/day ---

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DateTime:
    """The 7-byte GATT Date Time; device clocks carry no zone, so this module treats them as UTC."""

    year: int
    month: int
    day: int
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("year", 0, 9999), ("month", 0, 12), ("day", 0, 31),
                             ("hours", 0, 23), ("minutes", 0, 59), ("seconds", 0, 59)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise GattError(f"date time: {name} {v!r} out of range {lo}..{hi}")
        if 0 < self.year < 1582:
            raise GattError(f"date time: year {self.year} before 1582 (0 means unknown)")
        # An unknown year is checked as a leap year so that 29 February stays acceptable.
        if self.month and self.day > calendar.monthrange(self.year or 2000, self.month)[1]:
            raise GattError(f"date time: day {self.day} does not exist in month {self.month} of {self.year}")

    def encode(self) -> bytes:
        rest = (self.month, self.day, self.hours, self.minutes, self.seconds)
        return self.year.to_bytes(2, "little") + bytes(rest)

    @classmethod
    def decode(cls, data: bytes) -> DateTime:
        if len(data) != 7:
            raise GattError(f"date time: needs 7 bytes, got {len(data)}")
        return cls(int.from_bytes(data[:2], "little"), *data[2:])

    @classmethod
    def from_ms(cls, ms: int) -> DateTime:
        try:
            t = _EPOCH + timedelta(milliseconds=ms)
        except (OverflowError, TypeError) as exc:
            raise GattError(f"date time: cannot represent {ms!r} ms: {exc}") from None
        return cls(t.year, t.month, t.day, t.hour, t.minute, t.second)

    def to_ms(self) -> int | None:
        """Milliseconds since the Unix epoch, or None when year, month or day is unknown."""
        if not (self.year and self.month and self.day):
            return None
        t = datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds, tzinfo=UTC)
        return (t - _EPOCH) // timedelta(milliseconds=1)


# --- frame reading/writing helpers ---

class _Reader:
    def __init__(self, frame: bytes, what: str) -> None:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise GattError(f"{what}: frame must be bytes, got {type(frame).__name__}")
        self.buf, self.pos, self.what = bytes(frame), 0, what

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.buf):
            raise GattError(f"{self.what}: truncated in {field} (needs {n} bytes at offset {self.pos}, "
                            f"frame is {len(self.buf)} bytes)")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")

    def flags(self, allowed: int) -> int:
        f = self.uint(1, "flags")
        if f & ~allowed:
            raise GattError(f"{self.what}: reserved flag bits set (flags 0x{f:02X}, allowed 0x{allowed:02X})")
        return f

    def sfloat(self, field: str) -> float:
        return _med_decode(self.uint(2, field), 12, 4, f"{self.what}: {field}")

    def float32(self, field: str) -> float:
        return _med_decode(self.uint(4, field), 24, 8, f"{self.what}: {field}")

    def date_time(self, field: str) -> DateTime:
        try:
            return DateTime.decode(self.take(7, field))
        except GattError as exc:
            raise GattError(f"{self.what}: {field}: {exc}") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise GattError(f"{self.what}: {len(self.buf) - self.pos} trailing bytes after the last field")


def _uint(v: object, bits: int, name: str, signed: bool = False) -> int:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise GattError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _sf(value: float | None, name: str) -> bytes:
    """SFLOAT field; an absent optional field (None) encodes as nothing."""
    return b"" if value is None else _med_encode(value, 12, 4, name).to_bytes(2, "little")


def _le(value: int | None, n: int) -> bytes:
    return b"" if value is None else value.to_bytes(n, "little")


def _bits(value: int | None, bits: int, reserved_mask: int, name: str) -> None:
    if value is not None and _uint(value, bits, name) & reserved_mask:
        raise GattError(f"{name}: reserved bits set (0x{value:X})")


def _flags(*present: object) -> bytes:
    """Flags byte with bit i set when present[i] is truthy."""
    return bytes([sum(1 << i for i, p in enumerate(present) if p)])


def _set(obj: object, **fields: Any) -> None:
    for k, v in fields.items():  # normalising fields of a frozen dataclass in __post_init__
        object.__setattr__(obj, k, v)


# --- 0x2A37 Heart Rate Measurement ---

def heart_rate_frame(bpm: int, contact: bool | None, energy_kj: int | None, rr: tuple[int, ...],
                     wide: bool = False) -> bytes:
    """The frame HeartRateMeasurement(...).encode() gives, for fields it would accept. Unchecked:
    an emulated device that makes its values in range calls this directly, as the dataclass's checks
    cost more than the encoding (tests/test_gatt.py holds the devices' frames to the checked path)."""
    wide = wide or bpm > 255
    # Bits 1-2 are contact status then contact supported: None -> 00, False -> 10 (0x04), True -> 11.
    flags = wide | (0 if contact is None else 6 if contact else 4) | (0 if energy_kj is None else 8) | (16 if rr else 0)
    out = bytes((flags,)) + bpm.to_bytes(2 if wide else 1, "little")
    if energy_kj is not None:
        out += energy_kj.to_bytes(2, "little")
    return out + struct.pack(f"<{len(rr)}H", *rr) if rr else out


@dataclass(frozen=True)
class HeartRateMeasurement:
    uuid: ClassVar[int] = HEART_RATE_MEASUREMENT
    kind: ClassVar[str] = "heart_rate"
    bpm: int
    sensor_contact: bool | None = None  # None: contact detection not supported
    energy_expended_kj: int | None = None
    rr_intervals: tuple[int, ...] = ()  # raw 1/1024 s units so frames round-trip bit-exactly
    wide: bool = False  # UINT16 value format; forced above 255 bpm

    def __post_init__(self) -> None:
        _uint(self.bpm, 16, "heart rate")
        if self.sensor_contact not in (None, True, False):
            raise GattError(f"sensor_contact must be None, True or False, got {self.sensor_contact!r}")
        _set(self, rr_intervals=tuple(self.rr_intervals), wide=bool(self.wide or self.bpm > 255))
        for v in (self.energy_expended_kj, *self.rr_intervals):
            if v is not None:
                _uint(v, 16, "energy expended / RR interval")

    def encode(self) -> bytes:
        return heart_rate_frame(self.bpm, self.sensor_contact, self.energy_expended_kj, self.rr_intervals,
                                self.wide)

    @classmethod
    def decode(cls, frame: bytes) -> HeartRateMeasurement:
        r = _Reader(frame, "heart rate measurement")
        f = r.flags(0x1F)
        bpm = r.uint(2 if f & 0x01 else 1, "heart rate value")
        contact = {2: False, 3: True}.get((f >> 1) & 3)  # 0 and 1 both mean "not supported"
        ee = r.uint(2, "energy expended") if f & 0x08 else None
        rr: list[int] = []
        if f & 0x10:
            left = len(r.buf) - r.pos
            if left == 0 or left % 2:
                raise GattError(f"heart rate measurement: RR-interval field has {left} bytes, "
                                "expected a non-zero multiple of 2")
            rr = [r.uint(2, "RR interval") for _ in range(left // 2)]
        r.end()
        return cls(bpm, contact, ee, tuple(rr), bool(f & 0x01))

    def reading(self, time_ms: int) -> Reading:
        values = {"heart_rate": float(self.bpm)}
        if self.energy_expended_kj is not None:
            values["energy_expended_kj"] = float(self.energy_expended_kj)
        if self.rr_intervals:
            values["rr_mean_ms"] = sum(self.rr_intervals) * 1000 / 1024 / len(self.rr_intervals)
        return Reading(self.kind, time_ms, values, UNIT_BY_KIND[self.kind])


# --- 0x2A35 Blood Pressure Measurement ---

BP_STATUS_MASK = 0x003F  # body movement, cuff fit, irregular pulse, pulse-rate range (2 bits), position


@dataclass(frozen=True)
class BloodPressureMeasurement:
    uuid: ClassVar[int] = BLOOD_PRESSURE_MEASUREMENT
    kind: ClassVar[str] = "blood_pressure"
    systolic: float
    diastolic: float
    mean: float  # mean arterial pressure; nan when the cuff does not compute it
    kpa: bool = False  # units of the three pressures: kPa instead of mmHg
    timestamp: DateTime | None = None
    pulse_rate: float | None = None
    user_id: int | None = None  # 255 = unknown user
    status: int | None = None

    def __post_init__(self) -> None:
        if self.user_id is not None:
            _uint(self.user_id, 8, "user id")
        _bits(self.status, 16, ~BP_STATUS_MASK & 0xFFFF, "blood pressure measurement status")
        if self.status is not None and (self.status >> 3) & 3 == 3:
            raise GattError("blood pressure measurement status: reserved pulse-rate range value 3")

    def encode(self) -> bytes:
        out = _flags(self.kpa, self.timestamp is not None, self.pulse_rate is not None,
                     self.user_id is not None, self.status is not None)
        out += _sf(self.systolic, "systolic") + _sf(self.diastolic, "diastolic") + _sf(self.mean, "MAP")
        out += self.timestamp.encode() if self.timestamp is not None else b""
        return out + _sf(self.pulse_rate, "pulse rate") + _le(self.user_id, 1) + _le(self.status, 2)

    @classmethod
    def decode(cls, frame: bytes) -> BloodPressureMeasurement:
        r = _Reader(frame, "blood pressure measurement")
        f = r.flags(0x1F)
        sys_, dia, mean = r.sfloat("systolic"), r.sfloat("diastolic"), r.sfloat("mean arterial pressure")
        ts = r.date_time("time stamp") if f & 0x02 else None
        pulse = r.sfloat("pulse rate") if f & 0x04 else None
        user = r.uint(1, "user id") if f & 0x08 else None
        status = r.uint(2, "measurement status") if f & 0x10 else None
        r.end()
        return cls(sys_, dia, mean, bool(f & 0x01), ts, pulse, user, status)

    def reading(self, time_ms: int) -> Reading:
        k = MMHG_PER_KPA if self.kpa else 1.0
        values = {"systolic": self.systolic * k, "diastolic": self.diastolic * k, "mean": self.mean * k}
        if self.pulse_rate is not None:
            values["pulse_rate"] = self.pulse_rate
        return Reading(self.kind, time_ms, values, UNIT_BY_KIND[self.kind])


# --- 0x2A1C Temperature Measurement ---

@dataclass(frozen=True)
class TemperatureMeasurement:
    uuid: ClassVar[int] = TEMPERATURE_MEASUREMENT
    kind: ClassVar[str] = "body_temperature"
    value: float
    fahrenheit: bool = False
    timestamp: DateTime | None = None
    # 1 armpit, 2 body (general), 3 ear, 4 finger, 5 GI tract, 6 mouth, 7 rectum, 8 toe, 9 tympanum
    temperature_type: int | None = None

    def __post_init__(self) -> None:
        ttype = self.temperature_type
        if ttype is not None and not 1 <= _uint(ttype, 8, "temperature type") <= 9:
            raise GattError(f"temperature measurement: reserved temperature type {self.temperature_type}")

    def encode(self) -> bytes:
        out = _flags(self.fahrenheit, self.timestamp is not None, self.temperature_type is not None)
        out += _med_encode(self.value, 24, 8, "temperature").to_bytes(4, "little")
        out += self.timestamp.encode() if self.timestamp is not None else b""
        return out + _le(self.temperature_type, 1)

    @classmethod
    def decode(cls, frame: bytes) -> TemperatureMeasurement:
        r = _Reader(frame, "temperature measurement")
        f = r.flags(0x07)
        value = r.float32("temperature")
        ts = r.date_time("time stamp") if f & 0x02 else None
        ttype = r.uint(1, "temperature type") if f & 0x04 else None
        r.end()
        return cls(value, bool(f & 0x01), ts, ttype)

    def reading(self, time_ms: int) -> Reading:
        c = (self.value - 32) * 5 / 9 if self.fahrenheit else self.value
        return Reading(self.kind, time_ms, {"temperature": c}, UNIT_BY_KIND[self.kind])


# --- 0x2A18 Glucose Measurement ---

GLUCOSE_SENSOR_STATUS_MASK = 0x0FFF  # bits 12-15 reserved
_GLUCOSE_TYPES = range(1, 11)  # 1 capillary whole blood ... 10 control solution
_GLUCOSE_LOCATIONS = (1, 2, 3, 4, 5, 15)  # finger, AST, earlobe, control solution, subcutaneous, n/a


@dataclass(frozen=True)
class GlucoseMeasurement:
    uuid: ClassVar[int] = GLUCOSE_MEASUREMENT
    kind: ClassVar[str] = "glucose"
    sequence: int
    base_time: DateTime
    time_offset_min: int | None = None
    concentration: float | None = None  # kg/L, or mol/L when mol_per_l
    mol_per_l: bool = False
    sample_type: int | None = None  # defaults to 1 (capillary whole blood) with a concentration
    sample_location: int | None = None  # defaults to 1 (finger) with a concentration
    sensor_status: int | None = None
    context_follows: bool = False  # a Glucose Measurement Context notification follows

    def __post_init__(self) -> None:
        _uint(self.sequence, 16, "sequence number")
        if not isinstance(self.base_time, DateTime):
            raise GattError("glucose measurement: base_time must be a DateTime")
        if self.time_offset_min is not None:
            _uint(self.time_offset_min, 16, "glucose time offset", signed=True)
        if self.concentration is None:
            if self.sample_type is not None or self.sample_location is not None:
                raise GattError("glucose measurement: sample type/location need a concentration")
        else:
            _set(self, sample_type=1 if self.sample_type is None else self.sample_type,
                 sample_location=1 if self.sample_location is None else self.sample_location)
            if _uint(self.sample_type, 4, "glucose sample type") not in _GLUCOSE_TYPES:
                raise GattError(f"glucose measurement: reserved sample type {self.sample_type!r}")
            if _uint(self.sample_location, 4, "glucose sample location") not in _GLUCOSE_LOCATIONS:
                raise GattError(f"glucose measurement: reserved sample location {self.sample_location!r}")
        _bits(self.sensor_status, 16, ~GLUCOSE_SENSOR_STATUS_MASK & 0xFFFF, "glucose sensor status")

    def encode(self) -> bytes:
        out = _flags(self.time_offset_min is not None, self.concentration is not None, self.mol_per_l,
                     self.sensor_status is not None, self.context_follows)
        out += self.sequence.to_bytes(2, "little") + self.base_time.encode()
        if self.time_offset_min is not None:
            out += self.time_offset_min.to_bytes(2, "little", signed=True)
        if self.concentration is not None:  # __post_init__ has filled in sample type and location
            out += _sf(self.concentration, "glucose concentration")
            out += bytes([(self.sample_location or 0) << 4 | (self.sample_type or 0)])
        return out + _le(self.sensor_status, 2)

    @classmethod
    def decode(cls, frame: bytes) -> GlucoseMeasurement:
        r = _Reader(frame, "glucose measurement")
        f = r.flags(0x1F)
        seq = r.uint(2, "sequence number")
        base = r.date_time("base time")
        offset = int.from_bytes(r.take(2, "time offset"), "little", signed=True) if f & 0x01 else None
        conc = stype = sloc = None
        if f & 0x02:
            conc = r.sfloat("glucose concentration")
            tl = r.uint(1, "type-sample location")
            stype, sloc = tl & 0x0F, tl >> 4
        status = r.uint(2, "sensor status annunciation") if f & 0x08 else None
        r.end()
        return cls(seq, base, offset, conc, bool(f & 0x04), stype, sloc, status, bool(f & 0x10))

    def reading(self, time_ms: int) -> Reading:
        if self.concentration is None:
            raise GattError("glucose measurement without a concentration (flags bit 1 clear): no value")
        if self.mol_per_l:
            return Reading(self.kind, time_ms, {"glucose": _scale(self.concentration, "1000")}, "mmol/L")
        return Reading(self.kind, time_ms, {"glucose": _scale(self.concentration, "100000")}, "mg/dL")


# --- 0x2A5F PLX Continuous Measurement ---

PLX_MEASUREMENT_STATUS_MASK = 0xFFE0  # bits 0-4 reserved
PLX_DEVICE_STATUS_MASK = 0x00FFFF  # bits 16-23 reserved


def plx_frame(spo2: float, pulse_rate: float, fast: tuple[float, float] | None = None,
              slow: tuple[float, float] | None = None, measurement_status: int | None = None,
              device_status: int | None = None, pai: float | None = None) -> bytes:
    """The frame PlxContinuousMeasurement(...).encode() gives, for fields it would accept (status
    bits unchecked here, as heart_rate_frame; a number SFLOAT cannot hold still raises GattError)."""
    flags = ((fast is not None) | (slow is not None) << 1 | (measurement_status is not None) << 2
             | (device_status is not None) << 3 | (pai is not None) << 4)
    out = bytes((flags,)) + _sf(spo2, "SpO2") + _sf(pulse_rate, "pulse rate")
    for pair in (fast, slow):
        if pair:
            out += _sf(pair[0], "SpO2") + _sf(pair[1], "pulse rate")
    if measurement_status is not None:
        out += measurement_status.to_bytes(2, "little")
    if device_status is not None:
        out += device_status.to_bytes(3, "little")
    return out + _sf(pai, "pulse amplitude index")


@dataclass(frozen=True)
class PlxContinuousMeasurement:
    uuid: ClassVar[int] = PLX_CONTINUOUS_MEASUREMENT
    kind: ClassVar[str] = "spo2"
    spo2: float  # percent
    pulse_rate: float  # per minute
    fast: tuple[float, float] | None = None  # (SpO2, PR) with a fast averaging window
    slow: tuple[float, float] | None = None  # (SpO2, PR) with a slow averaging window
    measurement_status: int | None = None
    device_status: int | None = None  # uint24 device and sensor status
    pulse_amplitude_index: float | None = None  # percent

    def __post_init__(self) -> None:
        for name in ("fast", "slow"):
            pair = getattr(self, name)
            if pair is not None:
                if not isinstance(pair, tuple | list) or len(pair) != 2:
                    raise GattError(f"PLX {name} field must be an (SpO2, PR) pair, got {pair!r}")
                _set(self, **{name: tuple(pair)})
        _bits(self.measurement_status, 16, ~PLX_MEASUREMENT_STATUS_MASK & 0xFFFF, "PLX measurement status")
        _bits(self.device_status, 24, ~PLX_DEVICE_STATUS_MASK & 0xFFFFFF, "PLX device and sensor status")

    def encode(self) -> bytes:
        return plx_frame(self.spo2, self.pulse_rate, self.fast, self.slow, self.measurement_status,
                         self.device_status, self.pulse_amplitude_index)

    @classmethod
    def decode(cls, frame: bytes) -> PlxContinuousMeasurement:
        r = _Reader(frame, "PLX continuous measurement")
        f = r.flags(0x1F)
        spo2, pr = r.sfloat("SpO2"), r.sfloat("pulse rate")
        fast = (r.sfloat("SpO2 fast"), r.sfloat("pulse rate fast")) if f & 0x01 else None
        slow = (r.sfloat("SpO2 slow"), r.sfloat("pulse rate slow")) if f & 0x02 else None
        mstatus = r.uint(2, "measurement status") if f & 0x04 else None
        dstatus = r.uint(3, "device and sensor status") if f & 0x08 else None
        pai = r.sfloat("pulse amplitude index") if f & 0x10 else None
        r.end()
        return cls(spo2, pr, fast, slow, mstatus, dstatus, pai)

    def reading(self, time_ms: int) -> Reading:
        values = {"spo2": self.spo2, "pulse_rate": self.pulse_rate}
        if self.pulse_amplitude_index is not None:
            values["pulse_amplitude_index"] = self.pulse_amplitude_index
        return Reading(self.kind, time_ms, values, UNIT_BY_KIND[self.kind])


# --- dispatch ---

Measurement = (HeartRateMeasurement | BloodPressureMeasurement | TemperatureMeasurement | GlucoseMeasurement
               | PlxContinuousMeasurement)
MEASUREMENT_BY_UUID: dict[int, type[Measurement]] = {
    cls.uuid: cls for cls in (HeartRateMeasurement, BloodPressureMeasurement, TemperatureMeasurement,
                              GlucoseMeasurement, PlxContinuousMeasurement)
}


def decode_measurement(uuid: int, frame: bytes) -> Measurement:
    """Every field of a frame, in the units the device sent."""
    cls = MEASUREMENT_BY_UUID.get(uuid) if isinstance(uuid, int) else None
    if cls is None:
        raise GattError(f"unknown characteristic UUID {uuid:#06x}" if isinstance(uuid, int)
                        else f"characteristic UUID must be an int, got {uuid!r}")
    return cls.decode(frame)


def decode(uuid: int, frame: bytes, time_ms: int) -> Reading:
    """A frame as a Reading in canonical units, stamped with time_ms (the gateway's receive time).

    Device timestamps (untrusted clocks) are available from decode_measurement. NaN/INF values from the
    device pass through as nan/inf (e.g. a cuff without mean arterial pressure sends NaN).
    """
    if isinstance(time_ms, bool) or not isinstance(time_ms, int) or time_ms < 0:
        raise GattError(f"time_ms must be a non-negative int, got {time_ms!r}")
    return decode_measurement(uuid, frame).reading(time_ms)


def encode(kind: str, **fields: Any) -> bytes:
    """Frame for a kind from the fields of its measurement class, e.g. encode("heart_rate", bpm=72)."""
    if kind not in UUID_BY_KIND:
        raise GattError(f"unknown kind {kind!r}; expected one of {sorted(UUID_BY_KIND)}")
    try:
        m = MEASUREMENT_BY_UUID[UUID_BY_KIND[kind]](**fields)
    except TypeError as exc:
        raise GattError(f"{kind}: {exc}") from None
    return m.encode()


def encode_reading(reading: Reading, *, sequence: int = 0) -> bytes:
    """Frame carrying a Reading's values the way a device sends them (glucose in kg/L or mol/L).

    Integer fields (heart rate, energy expended) are rounded; rr_mean_ms becomes a single RR interval.
    """
    v, kind, unit = reading.values, reading.kind, reading.unit
    if kind not in UNIT_BY_KIND or unit not in (UNIT_BY_KIND[kind], "mmol/L" if kind == "glucose" else None):
        raise GattError(f"cannot encode a {kind!r} reading in unit {unit!r}")
    try:
        m: Measurement
        if kind == "heart_rate":
            ee = v.get("energy_expended_kj")
            rr = (round(v["rr_mean_ms"] * 1.024),) if "rr_mean_ms" in v else ()
            m = HeartRateMeasurement(round(v["heart_rate"]), None, None if ee is None else round(ee), rr)
        elif kind == "blood_pressure":
            m = BloodPressureMeasurement(v["systolic"], v["diastolic"], v["mean"],
                                         pulse_rate=v.get("pulse_rate"))
        elif kind == "body_temperature":
            m = TemperatureMeasurement(v["temperature"])
        elif kind == "glucose":
            mol = unit == "mmol/L"
            conc = _scale(v["glucose"], "0.001" if mol else "0.00001")
            m = GlucoseMeasurement(sequence, DateTime.from_ms(reading.time_ms), concentration=conc,
                                   mol_per_l=mol)
        else:
            m = PlxContinuousMeasurement(v["spo2"], v["pulse_rate"],
                                         pulse_amplitude_index=v.get("pulse_amplitude_index"))
        return m.encode()
    except KeyError as exc:
        raise GattError(f"{kind} reading lacks value {exc}") from None
    except GattError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. round(nan) for an integer field
        raise GattError(f"cannot encode {kind} reading: {exc}") from None
