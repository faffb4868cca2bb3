"""GATT measurement codecs (devices.wearable.gatt) and the emulated wearables (devices.wearable.wearables)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.wearable.gatt import (
    BLOOD_PRESSURE_MEASUREMENT,
    GLUCOSE_MEASUREMENT,
    HEART_RATE_MEASUREMENT,
    KIND_BY_UUID,
    PLX_CONTINUOUS_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    UNIT_BY_KIND,
    UUID_BY_KIND,
    BloodPressureMeasurement,
    DateTime,
    GattError,
    GlucoseMeasurement,
    HeartRateMeasurement,
    PlxContinuousMeasurement,
    Reading,
    TemperatureMeasurement,
    decode,
    decode_float,
    decode_measurement,
    decode_sfloat,
    encode,
    encode_float,
    encode_reading,
    encode_sfloat,
    heart_rate_frame,
    plx_frame,
)
from devices.wearable.wearables import DEFAULT_PERIOD_MS, Wearable, make_wearable

KINDS = list(UUID_BY_KIND)
SPECIALS = [math.nan, math.inf, -math.inf]


# --- strategies: values drawn from what the wire can carry, so round trips are bit-exact ---

# Raw values that are ordinary numbers: everything except the special values at exponent 0.
SFLOAT_NUMBERS = st.integers(0, 0xFFFF).filter(lambda r: not 0x07FE <= r <= 0x0802)
FLOAT_NUMBERS = st.integers(0, 0xFFFFFFFF).filter(lambda r: not 0x007FFFFE <= r <= 0x00800002)


def sfloats() -> st.SearchStrategy[float]:
    return SFLOAT_NUMBERS.map(decode_sfloat) | st.sampled_from(SPECIALS)


def float32s() -> st.SearchStrategy[float]:
    return FLOAT_NUMBERS.map(decode_float) | st.sampled_from(SPECIALS)


def opt(s: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | s


date_times = st.builds(DateTime.from_ms, st.integers(-12_219_292_800_000, 253_402_300_799_999)) | st.builds(
    DateTime, st.just(0) | st.integers(1582, 9999), st.integers(0, 12), st.integers(0, 28),
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))


@st.composite
def glucose_measurements(draw: st.DrawFn) -> GlucoseMeasurement:
    conc = draw(opt(sfloats()))
    stype = draw(st.integers(1, 10)) if conc is not None else None
    sloc = draw(st.sampled_from([1, 2, 3, 4, 5, 15])) if conc is not None else None
    offset = draw(opt(st.integers(-32768, 32767)))
    return GlucoseMeasurement(draw(st.integers(0, 0xFFFF)), draw(date_times), offset, conc,
                              draw(st.booleans()), stype, sloc, draw(opt(st.integers(0, 0x0FFF))),
                              draw(st.booleans()))


MEASUREMENTS: dict[str, st.SearchStrategy] = {
    "heart_rate": st.builds(HeartRateMeasurement, st.integers(0, 0xFFFF),
                            st.sampled_from([None, True, False]), opt(st.integers(0, 0xFFFF)),
                            st.lists(st.integers(0, 0xFFFF), max_size=12).map(tuple), st.booleans()),
    "blood_pressure": st.builds(BloodPressureMeasurement, sfloats(), sfloats(), sfloats(), st.booleans(),
                                opt(date_times), opt(sfloats()), opt(st.integers(0, 255)),
                                opt(st.integers(0, 0x3F).filter(lambda s: (s >> 3) & 3 != 3))),
    "body_temperature": st.builds(TemperatureMeasurement, float32s(), st.booleans(), opt(date_times),
                                  opt(st.integers(1, 9))),
    "glucose": glucose_measurements(),
    "spo2": st.builds(PlxContinuousMeasurement, sfloats(), sfloats(), opt(st.tuples(sfloats(), sfloats())),
                      opt(st.tuples(sfloats(), sfloats())),
                      opt(st.integers(0, 0xFFFF).map(lambda s: s & 0xFFE0)), opt(st.integers(0, 0xFFFF)),
                      opt(sfloats())),
}


# --- SFLOAT / FLOAT ---

@pytest.mark.parametrize("raw,value", [
    (0x0072, 114.0), (0xF16C, 36.4), (0xFFFF, -0.1), (0x0FFF, -1.0), (0x0000, 0.0), (0xE7D0, 20.0),
    (0x1001, 10.0), (0x2005, 500.0), (0x07FD, 2045.0), (0x77FF, 2.047e10), (0x8001, 1e-8), (0xF803, -204.5),
    (0x7800, -2.048e10), (0xF800, -204.8),
])
def test_sfloat_known_values(raw: int, value: float) -> None:
    assert decode_sfloat(raw) == value


@pytest.mark.parametrize("value,raw", [
    (114, 0x0072), (114.0, 0x0072), (36.4, 0xF16C), (-0.1, 0xFFFF), (-1, 0x0FFF), (0.0, 0x0000), (10, 0x000A),
    (0.5, 0xF005), (120, 0x0078), (2045, 0x07FD), (2046, 0x10CD), (1e5, 0x23E8), (2.047e10, 0x77FF),
    (-2.048e10, 0x7800), (1e-8, 0x8001), (1e-12, 0x0000), (98.6, 0xF3DA), (204.7, 0xF7FF), (-204.8, 0xF800),
])
def test_sfloat_known_encodings(value: float, raw: int) -> None:
    assert encode_sfloat(value) == raw


@pytest.mark.parametrize("raw,value", [
    (0xFF00016C, 36.4), (0x00000000, 0.0), (0xFE000001, 0.01), (0x00FFFFFF, -1.0), (0x007FFFFD, 8388605.0),
    (0xFF0003DA, 98.6), (0xFDFFFFFF, -0.001), (0x00000064, 100.0), (0x017FFFFF, 83886070.0),
])
def test_float_known_values(raw: int, value: float) -> None:
    assert decode_float(raw) == value
    assert encode_float(value) == raw


def test_float_decode_only() -> None:
    # Other spellings of a number decode fine; the encoder picks the shortest one.
    assert decode_float(0x02000001) == 100.0 and decode_sfloat(0x1001) == 10.0 and encode_sfloat(10) == 0x000A


def test_float_spec_example_temperature() -> None:
    # 36.4 Cel = mantissa 364 (0x00016C), exponent -1 (0xFF): bytes 6C 01 00 FF after the flags.
    assert encode_float(36.4) == 0xFF00016C
    assert decode(TEMPERATURE_MEASUREMENT, bytes.fromhex("006c0100ff"), 0).values == {"temperature": 36.4}


@pytest.mark.parametrize("decoder,raw,expected", [
    (decode_sfloat, 0x07FF, "nan"), (decode_sfloat, 0x0800, "nan"), (decode_sfloat, 0x07FE, "inf"),
    (decode_sfloat, 0x0802, "-inf"), (decode_float, 0x007FFFFF, "nan"), (decode_float, 0x00800000, "nan"),
    (decode_float, 0x007FFFFE, "inf"), (decode_float, 0x00800002, "-inf"),
])
def test_special_values_decode(decoder, raw: int, expected: str) -> None:
    v = decoder(raw)
    assert math.isnan(v) if expected == "nan" else v == float(expected)


def test_special_values_encode_and_reserved() -> None:
    assert [encode_sfloat(v) for v in SPECIALS] == [0x07FF, 0x07FE, 0x0802]
    assert [encode_float(v) for v in SPECIALS] == [0x007FFFFF, 0x007FFFFE, 0x00800002]
    with pytest.raises(GattError, match="reserved special value"):
        decode_sfloat(0x0801)
    with pytest.raises(GattError, match="reserved special value"):
        decode_float(0x00800001)
    # Only exponent 0 is special: the same mantissa with another exponent is an ordinary number.
    assert decode_sfloat(0x17FF) == 20470.0 and decode_sfloat(0xF801) == -204.7


@pytest.mark.parametrize("func,bad", [
    (encode_sfloat, 2.0476e10), (encode_sfloat, -3e10), (encode_float, 1e140), (encode_sfloat, "36.4"),
    (encode_sfloat, True), (encode_float, None), (decode_sfloat, 0x10000), (decode_sfloat, -1),
    (decode_float, 1 << 32),
])
def test_float_codec_rejects(func, bad: object) -> None:
    with pytest.raises(GattError):
        func(bad)


@settings(max_examples=1000)
@given(SFLOAT_NUMBERS)
def test_sfloat_round_trip_exact(raw: int) -> None:
    v = decode_sfloat(raw)
    assert decode_sfloat(encode_sfloat(v)) == v


@settings(max_examples=1000)
@given(FLOAT_NUMBERS)
def test_float_round_trip_exact(raw: int) -> None:
    v = decode_float(raw)
    assert decode_float(encode_float(v)) == v


def test_sfloat_round_trip_exhaustive() -> None:
    for raw in range(0x10000):
        if not 0x07FE <= raw <= 0x0802:
            v = decode_sfloat(raw)
            assert decode_sfloat(encode_sfloat(v)) == v, hex(raw)


@given(st.floats(min_value=-2.04e10, max_value=2.04e10))
def test_sfloat_round_trip_precision(v: float) -> None:
    # A mantissa of at least 205 unless the exponent bottoms out at -8: <0.25 % error, or < 5e-9 absolute.
    assert abs(decode_sfloat(encode_sfloat(v)) - v) <= max(abs(v) * 2.45e-3, 5e-9)


@given(st.floats(min_value=-1e130, max_value=1e130))
def test_float_round_trip_precision(v: float) -> None:
    assert abs(decode_float(encode_float(v)) - v) <= max(abs(v) * 6.5e-7, 5e-129)


# --- Date Time ---

def test_date_time_known_bytes() -> None:
    dt = DateTime(2013, 12, 5, 14, 30, 0)
    assert dt.encode() == bytes.fromhex("dd070c050e1e00")
    assert DateTime.decode(bytes.fromhex("dd070c050e1e00")) == dt
    assert DateTime.from_ms(dt.to_ms()) == dt  # type: ignore[arg-type]
    assert DateTime(0, 0, 0).to_ms() is None  # unknown date
    assert DateTime(0, 2, 29).encode() == bytes.fromhex("0000021d000000")


@given(st.integers(-12_219_292_800_000, 253_402_300_799_999))
def test_date_time_ms_round_trip(ms: int) -> None:
    assert DateTime.from_ms(ms).to_ms() == ms - ms % 1000


@pytest.mark.parametrize("fields", [
    (2024, 13, 1), (2024, 1, 32), (2023, 2, 29), (2024, 4, 31), (1000, 1, 1), (2024, 1, 1, 24),
    (2024, 1, 1, 0, 60), (2024, 1, 1, 0, 0, 60), (10000, 1, 1), (2024, 1, 1.5),
])
def test_date_time_rejects(fields: tuple) -> None:
    with pytest.raises(GattError, match="date time"):
        DateTime(*fields)


# --- measurement round trips ---

@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=300)
@given(data=st.data())
def test_measurement_round_trip(kind: str, data: st.DataObject) -> None:
    m = data.draw(MEASUREMENTS[kind])
    frame = m.encode()
    back = decode_measurement(UUID_BY_KIND[kind], frame)
    assert repr(back) == repr(m)  # repr, not ==: NaN fields compare unequal field by field
    assert back.encode() == frame
    if kind != "glucose" or m.concentration is not None:
        r = decode(UUID_BY_KIND[kind], frame, 1234)
        assert (r.kind, r.time_ms) == (kind, 1234)
        assert r.unit == ("mmol/L" if kind == "glucose" and m.mol_per_l else UNIT_BY_KIND[kind])


TS = DateTime(2024, 2, 29, 23, 59, 58)


def _build(kind: str, mask: int) -> object:
    """The measurement whose flags byte should be exactly mask."""
    def b(i: int) -> bool:
        return bool(mask >> i & 1)
    if kind == "heart_rate":
        contact = {0: None, 2: False, 3: True}[(mask >> 1) & 3]
        return HeartRateMeasurement(72, contact, 1234 if b(3) else None, (800, 1024) if b(4) else (), b(0))
    if kind == "blood_pressure":
        pressures = (16.0, 10.7, 12.4) if b(0) else (120, 80, 93.3)  # kPa or mmHg
        return BloodPressureMeasurement(*pressures, b(0), TS if b(1) else None, 72 if b(2) else None,
                                        3 if b(3) else None, 0x0025 if b(4) else None)
    if kind == "body_temperature":
        return TemperatureMeasurement(98.6 if b(0) else 37.0, b(0), TS if b(1) else None, 6 if b(2) else None)
    if kind == "glucose":
        conc = (5.6e-3 if b(2) else 1.01e-3) if b(1) else None  # mol/L or kg/L
        return GlucoseMeasurement(7, TS, -60 if b(0) else None, conc, b(2), 2 if b(1) else None,
                                  15 if b(1) else None, 0x0801 if b(3) else None, b(4))
    return PlxContinuousMeasurement(97, 72, (96, 75) if b(0) else None, (98, 70) if b(1) else None,
                                    0x0120 if b(2) else None, 0x00A001 if b(3) else None,
                                    4.5 if b(4) else None)


FLAG_CASES = [(k, mask) for k in KINDS for mask in range(8 if k == "body_temperature" else 32)
              if not (k == "heart_rate" and (mask >> 1) & 3 == 1)]


@pytest.mark.parametrize("kind,mask", FLAG_CASES)
def test_every_flag_combination(kind: str, mask: int) -> None:
    m = _build(kind, mask)
    frame = m.encode()  # type: ignore[attr-defined]
    assert frame[0] == mask
    assert decode_measurement(UUID_BY_KIND[kind], frame) == m
    if kind == "glucose" and not mask & 0x02:
        with pytest.raises(GattError, match="without a concentration"):
            decode(GLUCOSE_MEASUREMENT, frame, 0)
        return
    r = decode(UUID_BY_KIND[kind], frame, 5)
    expected = {"heart_rate": 72.0, "blood_pressure": 120.0, "body_temperature": 37.0, "spo2": 97.0,
                "glucose": 5.6 if mask & 0x04 else 101.0}[kind]
    assert next(iter(r.values.values())) == pytest.approx(expected, rel=1e-4)


def test_heart_rate_contact_bits_01_mean_unsupported() -> None:
    assert decode_measurement(HEART_RATE_MEASUREMENT, bytes.fromhex("0248")).sensor_contact is None  # type: ignore


@pytest.mark.parametrize("uuid,hexframe,values,unit", [
    (HEART_RATE_MEASUREMENT, "0648", {"heart_rate": 72.0}, "/min"),
    (HEART_RATE_MEASUREMENT, "014800", {"heart_rate": 72.0}, "/min"),
    (HEART_RATE_MEASUREMENT, "014001", {"heart_rate": 320.0}, "/min"),
    (HEART_RATE_MEASUREMENT, "184839300004", {"heart_rate": 72.0, "energy_expended_kj": 12345.0,
                                              "rr_mean_ms": 1000.0}, "/min"),
    (HEART_RATE_MEASUREMENT, "104800040006", {"heart_rate": 72.0, "rr_mean_ms": 1250.0}, "/min"),
    (BLOOD_PRESSURE_MEASUREMENT, "0078005000a5f3", {"systolic": 120.0, "diastolic": 80.0, "mean": 93.3},
     "mm[Hg]"),
    (BLOOD_PRESSURE_MEASUREMENT, "0478005000a5f34800", {"systolic": 120.0, "diastolic": 80.0, "mean": 93.3,
                                                         "pulse_rate": 72.0}, "mm[Hg]"),
    (TEMPERATURE_MEASUREMENT, "006c0100ff", {"temperature": 36.4}, "Cel"),
    (GLUCOSE_MEASUREMENT, "020100e80701020304055eb011", {"glucose": 94.0}, "mg/dL"),
    (GLUCOSE_MEASUREMENT, "060100e807010203040534c011", {"glucose": 5.2}, "mmol/L"),
    (PLX_CONTINUOUS_MEASUREMENT, "0061004800", {"spo2": 97.0, "pulse_rate": 72.0}, "%"),
    (PLX_CONTINUOUS_MEASUREMENT, "10610048002df0", {"spo2": 97.0, "pulse_rate": 72.0,
                                                    "pulse_amplitude_index": 4.5}, "%"),
])
def test_known_frames(uuid: int, hexframe: str, values: dict, unit: str) -> None:
    assert decode(uuid, bytes.fromhex(hexframe), 42) == Reading(KIND_BY_UUID[uuid], 42, values, unit)


def test_unit_conversions() -> None:
    # Fahrenheit to Celsius; kPa to mmHg; a cuff without MAP sends NaN, which passes through.
    t = decode(TEMPERATURE_MEASUREMENT, bytes.fromhex("01da0300ff"), 0)
    assert t.values["temperature"] == pytest.approx(37.0) and t.unit == "Cel"
    bp = decode(BLOOD_PRESSURE_MEASUREMENT, bytes.fromhex("01a0f06bf0ff07"), 0)
    assert bp.values["systolic"] == pytest.approx(120.01, abs=0.01)
    assert bp.values["diastolic"] == pytest.approx(80.26, abs=0.01)
    assert math.isnan(bp.values["mean"]) and bp.unit == "mm[Hg]"


@pytest.mark.parametrize("reading", [
    Reading("heart_rate", 1, {"heart_rate": 64.0}, "/min"),
    Reading("heart_rate", 1, {"heart_rate": 300.0, "energy_expended_kj": 10.0, "rr_mean_ms": 1000.0}, "/min"),
    Reading("blood_pressure", 2, {"systolic": 131.0, "diastolic": 85.0, "mean": 100.3, "pulse_rate": 66.0},
            "mm[Hg]"),
    Reading("body_temperature", 3, {"temperature": 36.87}, "Cel"),
    Reading("glucose", 1_700_000_000_000, {"glucose": 142.0}, "mg/dL"),
    Reading("glucose", 4, {"glucose": 7.9}, "mmol/L"),
    Reading("spo2", 5, {"spo2": 95.0, "pulse_rate": 101.0, "pulse_amplitude_index": 2.5}, "%"),
])
def test_encode_reading_round_trip(reading: Reading) -> None:
    assert decode(UUID_BY_KIND[reading.kind], encode_reading(reading), reading.time_ms) == reading


@given(st.integers(20, 600), st.integers(0, 2**41))
def test_glucose_mg_dl_exact(mg_dl: int, t: int) -> None:
    r = Reading("glucose", t, {"glucose": float(mg_dl)}, "mg/dL")
    frame = encode_reading(r, sequence=9)
    assert not frame[0] & 0x04  # kg/L on the wire
    assert decode(GLUCOSE_MEASUREMENT, frame, t) == r


def test_encode_helper() -> None:
    assert encode("heart_rate", bpm=72, sensor_contact=True) == bytes.fromhex("0648")
    assert encode("spo2", spo2=97, pulse_rate=72) == bytes.fromhex("0061004800")
    assert encode("body_temperature", value=36.4) == bytes.fromhex("006c0100ff")


@pytest.mark.parametrize("call", [
    lambda: encode("weight", value=1), lambda: encode("heart_rate", bpm=72, colour=1),
    lambda: encode("heart_rate", bpm=70000), lambda: encode("heart_rate", bpm=-1),
    lambda: encode("heart_rate", bpm=72.5), lambda: encode("heart_rate", bpm=72, rr_intervals=(70000,)),
    lambda: encode("heart_rate", bpm=72, sensor_contact="yes"),
    lambda: encode("blood_pressure", systolic=1e12, diastolic=80, mean=90),
    lambda: encode("blood_pressure", systolic=120, diastolic=80, mean=90, status=0x40),
    lambda: encode("blood_pressure", systolic=120, diastolic=80, mean=90, status=0x18),
    lambda: encode("blood_pressure", systolic=120, diastolic=80, mean=90, user_id=256),
    lambda: encode("body_temperature", value=37, temperature_type=10),
    lambda: encode("glucose", sequence=1, base_time=TS, sample_type=1),
    lambda: encode("glucose", sequence=1, base_time=TS, concentration=1e-3, sample_location=6),
    lambda: encode("glucose", sequence=1, base_time=TS, time_offset_min=40000),
    lambda: encode("glucose", sequence=1, base_time="2024-01-01"),
    lambda: encode("spo2", spo2=97, pulse_rate=72, measurement_status=0x0001),
    lambda: encode("spo2", spo2=97, pulse_rate=72, device_status=0x010000),
    lambda: encode("spo2", spo2=97, pulse_rate=72, fast=(1, 2, 3)),
    lambda: encode_reading(Reading("heart_rate", 0, {"heart_rate": math.nan}, "/min")),
    lambda: encode_reading(Reading("heart_rate", 0, {"pulse": 60.0}, "/min")),
    lambda: encode_reading(Reading("body_temperature", 0, {"temperature": 98.6}, "degF")),
    lambda: encode_reading(Reading("weight", 0, {"weight": 70.0}, "kg")),
    lambda: DateTime.from_ms(10**18),
])
def test_encoders_reject(call) -> None:
    with pytest.raises(GattError):
        call()


# --- malformed input ---

# One frame per kind with every optional field present (heart rate with a single RR interval, so that
# any truncation is invalid rather than just one RR interval shorter).
FULL = {k: _build(k, 0x07 if k == "body_temperature" else 0x1F).encode() for k in KINDS}  # type: ignore
RESERVED_FLAG_BITS = {"heart_rate": 0xE0, "blood_pressure": 0xE0, "body_temperature": 0xF8, "glucose": 0xE0,
                      "spo2": 0xE0}
FULL["heart_rate"] = HeartRateMeasurement(72, True, 5, (900,)).encode()


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_frames(kind: str) -> None:
    frame = FULL[kind]
    for cut in range(len(frame)):
        with pytest.raises(GattError, match="truncated|RR-interval"):
            decode(UUID_BY_KIND[kind], frame[:cut], 0)


@pytest.mark.parametrize("kind", KINDS)
def test_trailing_bytes(kind: str) -> None:
    with pytest.raises(GattError, match="trailing|RR-interval"):
        decode(UUID_BY_KIND[kind], FULL[kind] + b"\x00", 0)


@pytest.mark.parametrize("kind,bit", [(k, 1 << b) for k in KINDS for b in range(8)
                                      if RESERVED_FLAG_BITS[k] & (1 << b)])
def test_reserved_flag_bits(kind: str, bit: int) -> None:
    frame = bytes([FULL[kind][0] | bit]) + FULL[kind][1:]
    with pytest.raises(GattError, match="reserved flag bits"):
        decode(UUID_BY_KIND[kind], frame, 0)


@pytest.mark.parametrize("uuid,hexframe,match", [
    (BLOOD_PRESSURE_MEASUREMENT, "00010850000000", "systolic: reserved special value"),
    (PLX_CONTINUOUS_MEASUREMENT, "0061000108", "pulse rate: reserved special value"),
    (TEMPERATURE_MEASUREMENT, "0001008000", "reserved special value"),
    (BLOOD_PRESSURE_MEASUREMENT, "1078005000a5f34000", "reserved bits"),
    (BLOOD_PRESSURE_MEASUREMENT, "1078005000a5f31800", "pulse-rate range"),
    (PLX_CONTINUOUS_MEASUREMENT, "04610048000100", "reserved bits"),
    (PLX_CONTINUOUS_MEASUREMENT, "0861004800000001", "reserved bits"),
    (GLUCOSE_MEASUREMENT, "080100e80701020304050010", "reserved bits"),
    (GLUCOSE_MEASUREMENT, "020100e80701020304055eb010", "reserved sample type"),
    (GLUCOSE_MEASUREMENT, "020100e80701020304055eb061", "reserved sample location"),
    (TEMPERATURE_MEASUREMENT, "046c0100ff00", "reserved temperature type"),
    (TEMPERATURE_MEASUREMENT, "046c0100ff0a", "reserved temperature type"),
    (TEMPERATURE_MEASUREMENT, "026c0100ffe8070d01000000", "time stamp: date time: month"),
    (GLUCOSE_MEASUREMENT, "000100e8070230000000", "base time: date time: day"),
    (GLUCOSE_MEASUREMENT, "000100e8070101180000", "date time: hours"),
    (HEART_RATE_MEASUREMENT, "1048", "RR-interval"),
    (HEART_RATE_MEASUREMENT, "", "truncated in flags"),
    (0x2A00, "00", "unknown characteristic"),
    (0x2A19, "64", "unknown characteristic"),
])
def test_malformed(uuid: int, hexframe: str, match: str) -> None:
    with pytest.raises(GattError, match=match):
        decode(uuid, bytes.fromhex(hexframe), 0)


@pytest.mark.parametrize("args", [
    ("0x2A37", b"\x06\x48", 0), (None, b"\x06\x48", 0), (HEART_RATE_MEASUREMENT, "0648", 0),
    (HEART_RATE_MEASUREMENT, [6, 72], 0), (HEART_RATE_MEASUREMENT, b"\x06\x48", -1),
    (HEART_RATE_MEASUREMENT, b"\x06\x48", 1.5),
])
def test_bad_arguments(args: tuple) -> None:
    with pytest.raises(GattError):
        decode(*args)


def test_glucose_without_concentration_has_no_reading() -> None:
    frame = bytes.fromhex("000100e8070102030405")
    assert decode_measurement(GLUCOSE_MEASUREMENT, frame).concentration is None  # type: ignore[union-attr]
    with pytest.raises(GattError, match="without a concentration"):
        decode(GLUCOSE_MEASUREMENT, frame, 0)


def _decodes_or_gatt_error(uuid: int, frame: bytes) -> None:
    try:
        m = decode_measurement(uuid, frame)
    except GattError:
        return
    # whatever decodes re-encodes to a frame that decodes to the same measurement (repr: NaN-safe),
    # and that frame is canonical: encoding it again gives the same bytes
    again = decode_measurement(uuid, m.encode())
    assert type(again) is type(m) and repr(again) == repr(m)
    assert again.encode() == m.encode()
    # same length: every byte was parsed into a field (normalising SFLOATs or contact bits keeps sizes)
    assert len(m.encode()) == len(frame), (m, frame.hex())


@settings(max_examples=500)
@given(st.sampled_from(sorted(KIND_BY_UUID)), st.binary(max_size=40))
def test_fuzz_random_bytes(uuid: int, frame: bytes) -> None:
    _decodes_or_gatt_error(uuid, frame)


@settings(max_examples=1000)
@given(st.sampled_from(KINDS), st.integers(0, 0x1F), st.binary(max_size=30))
def test_fuzz_valid_flags(kind: str, flags: int, tail: bytes) -> None:
    _decodes_or_gatt_error(UUID_BY_KIND[kind], bytes([flags & ~RESERVED_FLAG_BITS[kind]]) + tail)


@settings(max_examples=500)
@given(st.sampled_from(KINDS), st.data())
def test_fuzz_mutated_frames(kind: str, data: st.DataObject) -> None:
    frame = bytearray(FULL[kind])
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] = data.draw(st.integers(0, 255))
    _decodes_or_gatt_error(UUID_BY_KIND[kind], bytes(frame))


# --- wearables ---

def test_uuid_kind_maps() -> None:
    assert UUID_BY_KIND == {"heart_rate": 0x2A37, "blood_pressure": 0x2A35, "body_temperature": 0x2A1C,
                            "glucose": 0x2A18, "spo2": 0x2A5F}
    assert {v: k for k, v in KIND_BY_UUID.items()} == UUID_BY_KIND


@pytest.mark.parametrize("kind", KINDS)
def test_wearable_deterministic_per_seed(kind: str) -> None:
    def frames(device: str, seed: int) -> list[tuple[int, int, bytes]]:
        w = make_wearable(kind, device, seed)
        return list(w.frames_between(10**12, 10**12 + 300 * w.period_ms))
    assert frames("dev-1", 7) == frames("dev-1", 7)
    assert frames("dev-1", 7) != frames("dev-1", 8)
    assert frames("dev-1", 7) != frames("dev-2", 7)


def _check_range(r: Reading) -> None:
    v = r.values
    if r.kind == "heart_rate":
        assert 55 <= v["heart_rate"] <= 110
        # +-10 % beat-to-beat variability, +-1 ms for the 1/1024 s resolution.
        assert "rr_mean_ms" not in v or 60_000 / 110 * 0.9 - 1 <= v["rr_mean_ms"] <= 60_000 / 55 * 1.1 + 1
    elif r.kind == "blood_pressure":
        assert 100 <= v["systolic"] <= 150 and 60 <= v["diastolic"] <= 95
        assert v["diastolic"] < v["mean"] < v["systolic"] and 55 <= v["pulse_rate"] <= 110
    elif r.kind == "body_temperature":
        assert 36.1 <= v["temperature"] <= 37.8
    elif r.kind == "glucose":
        assert 70 <= v["glucose"] <= 180 and v["glucose"] == int(v["glucose"]) and r.unit == "mg/dL"
    else:
        assert 93 <= v["spo2"] <= 100 and 55 <= v["pulse_rate"] <= 110


@pytest.mark.parametrize("kind", KINDS)
def test_wearable_physiological_ranges(kind: str) -> None:
    w = make_wearable(kind, "patient-7", 2024)
    start = 1_700_000_000_000
    readings = list(w.readings_between(start, start + 10_000 * w.period_ms))
    assert len(readings) == 10_000
    assert [r.time_ms for r in readings[:3]] == [start, start + w.period_ms, start + 2 * w.period_ms]
    for r in readings:
        assert r.kind == kind and r.unit == UNIT_BY_KIND[kind]
        _check_range(r)
    main = next(iter(readings[0].values))
    assert len({r.values[main] for r in readings}) >= 5  # the signal actually moves


def test_wearable_frame_details() -> None:
    hr = make_wearable("heart_rate", "strap", 1)
    frames = [hr.next_frame(i * 1000) for i in range(600)]
    # Every notification fits the default 23-byte ATT MTU (20 bytes of value).
    assert all(uuid == HEART_RATE_MEASUREMENT and len(f) <= 20 for uuid, f in frames)
    energy = [decode(u, f, 0).values.get("energy_expended_kj") for u, f in frames]
    sent = [e for e in energy if e is not None]
    assert len(sent) == 60 and sent == sorted(sent)
    glucose = make_wearable("glucose", "meter", 1)
    ms = [decode_measurement(*glucose.next_frame(i * 300_000)) for i in range(5)]
    assert [m.sequence for m in ms] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert not any(m.mol_per_l for m in ms)  # type: ignore[union-attr]  # kg/L, as real meters send
    assert ms[1].base_time == DateTime(1970, 1, 1, 0, 5, 0)  # type: ignore[union-attr]


def test_make_wearable_periods_and_errors() -> None:
    assert {k: make_wearable(k, "d", 0).period_ms for k in KINDS} == DEFAULT_PERIOD_MS
    assert DEFAULT_PERIOD_MS == {"heart_rate": 1000, "spo2": 1000, "body_temperature": 60_000,
                                 "blood_pressure": 300_000, "glucose": 300_000}
    w = make_wearable("spo2", "d", 0, period_ms=250)
    assert isinstance(w, Wearable) and w.period_ms == 250 and w.uuid == PLX_CONTINUOUS_MEASUREMENT
    assert len(list(w.readings_between(0, 1000))) == 4
    with pytest.raises(ValueError):
        make_wearable("weight", "d", 0)
    with pytest.raises(ValueError):
        make_wearable("spo2", "d", 0, period_ms=0)


@pytest.mark.parametrize("kind", KINDS)
def test_wearable_frames_are_what_the_checked_encoder_gives(kind: str) -> None:
    # heart rate and SpO2 devices encode with the unchecked frame functions: every frame must decode
    # into a measurement that passes the dataclass's checks and encodes back to the same bytes
    w = make_wearable(kind, "patient-9", 11)
    for t, uuid, frame in w.frames_between(1_700_000_000_000, 1_700_000_000_000 + 3_000 * w.period_ms):
        m = decode_measurement(uuid, frame)
        assert m is not None and m.encode() == frame, (t, frame.hex())


def _u16s(rr: tuple[int, ...]) -> bytes:
    return b"".join(v.to_bytes(2, "little") for v in rr)


@settings(max_examples=300, deadline=None)
@given(bpm=st.integers(0, 0xFFFF), contact=st.sampled_from([None, False, True]),
       ee=st.none() | st.integers(0, 0xFFFF), rr=st.lists(st.integers(0, 0xFFFF), max_size=9).map(tuple),
       wide=st.booleans())
def test_heart_rate_frame_by_the_spec(bpm: int, contact: bool | None, ee: int | None, rr: tuple[int, ...],
                                      wide: bool) -> None:
    wide = wide or bpm > 255  # the value is UINT16 when flag bit 0 is set
    flags = wide | {None: 0, False: 0x04, True: 0x06}[contact] | (0x08 if ee is not None else 0) | (0x10 if rr else 0)
    want = bytes([flags]) + bpm.to_bytes(2 if wide else 1, "little") + (b"" if ee is None else ee.to_bytes(2, "little"))
    assert heart_rate_frame(bpm, contact, ee, rr, wide) == want + _u16s(rr)
    assert HeartRateMeasurement(bpm, contact, ee, rr, wide).encode() == want + _u16s(rr)


@settings(max_examples=300, deadline=None)
@given(spo2=st.integers(0, 100), pr=st.integers(0, 300), status=st.none() | st.sampled_from([0, 0x20, 0xFFE0]),
       dev=st.none() | st.sampled_from([0, 0x1234]), pai=st.none() | st.sampled_from([0.5, 3.4, 10.0]),
       fast=st.none() | st.tuples(st.integers(0, 100), st.integers(0, 300)),
       slow=st.none() | st.tuples(st.integers(0, 100), st.integers(0, 300)))
def test_plx_frame_by_the_spec(spo2: int, pr: int, status: int | None, dev: int | None, pai: float | None,
                               fast: tuple[int, int] | None, slow: tuple[int, int] | None) -> None:
    flags = ((fast is not None) | (slow is not None) << 1 | (status is not None) << 2 | (dev is not None) << 3
             | (pai is not None) << 4)
    sf = encode_sfloat
    want = bytes([flags]) + sf(spo2).to_bytes(2, "little") + sf(pr).to_bytes(2, "little")
    for pair in (fast, slow):
        if pair is not None:
            want += sf(pair[0]).to_bytes(2, "little") + sf(pair[1]).to_bytes(2, "little")
    want += b"" if status is None else status.to_bytes(2, "little")
    want += b"" if dev is None else dev.to_bytes(3, "little")
    want += b"" if pai is None else sf(pai).to_bytes(2, "little")
    assert plx_frame(spo2, pr, fast, slow, status, dev, pai) == want
    assert PlxContinuousMeasurement(spo2, pr, fast, slow, status, dev, pai).encode() == want
