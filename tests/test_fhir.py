"""FHIR R4 export: every resource validates with fhir.resources (R4 4.0.1), with the LOINC codes, UCUM
units and categories the issue names; then the CLI's --fhir output from a real validator."""

from __future__ import annotations

import json
import math

import pytest

fhir_resources = pytest.importorskip("fhir.resources")
import pydantic  # noqa: E402  (installed with fhir.resources: its models are pydantic v1)
from fhir.resources import construct_fhir_element  # noqa: E402

from devices.patient import fhir  # noqa: E402
from devices.patient.staff import Window  # noqa: E402
from devices.wearable import gatt  # noqa: E402
from devices.wearable.wearables import make_wearable  # noqa: E402
from tests.test_cli import medchain  # noqa: E402

PATIENT = "ab" * 32
STAFF = "cd" * 32
T = 1_700_000_000_000


# R5 forms of the resource types the export writes: an R4 validator must refuse every one
R5_ONLY = [
    {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
     "triggeredBy": [{"observation": {"reference": "Observation/1"}, "type": "reflex"}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
     "bodyStructure": {"reference": "BodyStructure/1"}},
    {"resourceType": "Consent", "status": "active", "decision": "permit"},  # R4 needs scope and category
    {"resourceType": "AuditEvent", "code": {"text": "read"}, "recorded": "2024-01-01T00:00:00Z",  # R4: type
     "agent": [{"who": {"reference": "Practitioner/1"}}], "source": {"observer": {"reference": "Device/1"}}},
]


def test_library_is_r4():
    """The version string is only the library's claim: the models must also judge by R4's rules,
    accepting the R4 form and refusing the R5 form of the resource types the export writes."""
    assert fhir_resources.__fhir_version__ == "4.0.1"
    valid({"resourceType": "Observation", "status": "final", "code": {"text": "hr"}})
    valid({"resourceType": "Device", "deviceName": [{"name": "band", "type": "user-friendly-name"}]})  # R5: name
    valid({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2024-01-01T00:00:00Z",
           "agent": [{"requestor": True, "who": {"reference": "Practitioner/1"}}],
           "source": {"observer": {"reference": "Device/1"}}})
    for resource in R5_ONLY:
        with pytest.raises(pydantic.ValidationError):
            valid(resource)


def valid(resource: dict) -> dict:
    """Validate with the FHIR R4 models; return the library's own JSON of it (what it understood)."""
    model = construct_fhir_element(resource["resourceType"], resource)
    return json.loads(model.json())


def window(kind: str, n: int = 3) -> Window:
    frames = list(make_wearable(kind, "w", 7).frames_between(T, T + 3_600_000))[:n]
    return Window(f"bafkrei{kind}", 0, frames[0][0], frames[-1][0], frames)


def codes(obs: dict) -> list[str]:
    return [c["code"] for c in obs["code"]["coding"]]


@pytest.mark.parametrize(("kind", "loinc", "category", "ucum"), [
    ("heart_rate", ["8867-4"], "vital-signs", "/min"),
    ("body_temperature", ["8310-5"], "vital-signs", "Cel"),
    ("spo2", ["2708-6", "59408-5"], "vital-signs", "%"),
    ("glucose", ["2339-0"], "laboratory", "mg/dL"),
])
def test_observation_per_kind(kind, loinc, category, ucum):
    obs = fhir.observations(PATIENT, [window(kind)])
    assert len(obs) == 3
    for o in obs:
        v = valid(o)
        assert codes(v) == loinc and all(c["system"] == "http://loinc.org" for c in v["code"]["coding"])
        assert v["category"][0]["coding"][0]["code"] == category
        q = v["valueQuantity"]
        assert q["system"] == "http://unitsofmeasure.org" and q["code"] == ucum and math.isfinite(q["value"])
        assert v["subject"]["reference"] == f"Patient/{PATIENT}" and v["status"] == "final"
        gw = v["extension"][0]
        assert gw["url"] == "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
        assert gw["valueReference"]["reference"].startswith("Device/phone-")
        assert v["effectiveDateTime"].startswith("2023-11-14T")
    assert len({o["id"] for o in obs}) == 3  # distinct, stable ids
    assert fhir.observations(PATIENT, [window(kind)]) == obs


def test_blood_pressure_panel_components():
    (o,) = fhir.observations(PATIENT, [window("blood_pressure", 1)])
    v = valid(o)
    assert codes(v) == ["85354-9"] and "valueQuantity" not in v
    comp = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in v["component"]}
    assert set(comp) == {"8480-6", "8462-4"}
    assert all(q["code"] == "mm[Hg]" for q in comp.values()) and comp["8480-6"]["value"] > comp["8462-4"]["value"]


def test_glucose_in_mmol_is_converted_to_mg_dl():
    frame = gatt.GlucoseMeasurement(1, gatt.DateTime.from_ms(T), concentration=0.0055, mol_per_l=True).encode()
    r = gatt.decode(gatt.GLUCOSE_MEASUREMENT, frame, T)
    assert r.unit == "mmol/L"
    v = valid(fhir.observation(r, PATIENT, "bafkreix", 0))
    assert v["valueQuantity"]["code"] == "mg/dL" and v["valueQuantity"]["value"] == pytest.approx(5.5 * 18.016)


def test_nan_value_becomes_data_absent_reason():
    frame = gatt.BloodPressureMeasurement(120, 80, float("nan")).encode()
    r = gatt.decode(gatt.BLOOD_PRESSURE_MEASUREMENT, frame, T)
    temp = gatt.decode(gatt.TEMPERATURE_MEASUREMENT, gatt.TemperatureMeasurement(float("nan")).encode(), T)
    valid(fhir.observation(r, PATIENT, "bafkreix", 0))
    v = valid(fhir.observation(temp, PATIENT, "bafkreix", 1))
    assert v["dataAbsentReason"]["coding"][0]["code"] == "NaN" and "valueQuantity" not in v


def test_bundle_of_every_kind_validates():
    obs = fhir.observations(PATIENT, [window(k) for k in gatt.UUID_BY_KIND])
    b = valid(fhir.bundle(obs))
    assert b["type"] == "collection" and len(b["entry"]) == 15
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in b["entry"])


READ = {"reader": STAFF, "type": "heart_rate", "cid": "bafkreiabc", "from_ms": 0, "to_ms": 0, "time_ms": T,
        "tx": "ef" * 32, "allowed": True, "result": "ok", "height": 7, "break_glass": None}


def test_audit_events():
    plain = valid(fhir.audit_event(PATIENT, READ))
    assert plain["action"] == "R" and plain["outcome"] == "0" and "purposeOfEvent" not in plain
    denied = valid(fhir.audit_event(PATIENT, {**READ, "allowed": False, "result": "access denied", "cid": None}))
    assert denied["outcome"] == "4"
    bg = valid(fhir.audit_event(PATIENT, {**READ, "break_glass": "ETREAT"}))
    (purpose,) = bg["purposeOfEvent"]
    assert purpose["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                    "code": "ETREAT", "display": "emergency treatment"}
    assert bg["agent"][0]["purposeOfUse"] == bg["purposeOfEvent"]
    assert bg["agent"][0]["who"]["identifier"]["value"] == STAFF


def test_consents():
    g = {"staff": STAFF, "types": ["heart_rate", "blood_pressure"], "expiry_ms": T + 1000, "height": 3, "tx": "01" * 32}
    c = valid(fhir.consent(PATIENT, g, T))
    assert c["status"] == "active" and c["provision"]["type"] == "permit"
    assert [x["coding"][0]["code"] for x in c["provision"]["code"]] == ["8867-4", "85354-9"]
    assert c["provision"]["period"]["end"].startswith("2023-11-14T")
    assert valid(fhir.consent(PATIENT, g, T + 1000))["status"] == "inactive"  # expired
    assert valid(fhir.consent(PATIENT, {**g, "types": [], "expiry_ms": 0}, T))["status"] == "inactive"  # revoked
    rel = valid(fhir.release_consent(PATIENT, STAFF, {"type": "glucose", "expiry_ms": T + 5, "epochs": [0, 2],
                                                      "tx": "02" * 32}, T))
    assert rel["status"] == "active" and rel["id"] != c["id"] and rel["provision"]["purpose"][0]["code"] == "ETREAT"
    assert rel["provision"]["period"]["end"].startswith("2023-11-14T") and len(rel["provision"]["data"]) == 2
    assert valid(fhir.release_consent(PATIENT, STAFF, {"type": "glucose", "expiry_ms": T, "epochs": [0],
                                                       "tx": "02" * 32}, T))["status"] == "inactive"  # ended
    off = valid(fhir.break_glass_consent(PATIENT, False))
    assert off["provision"]["type"] == "deny" and off["provision"]["purpose"][0]["code"] == "ETREAT"


def test_cli_fhir_exports(node, tmp_path):
    pk, sk = tmp_path / "patient.json", tmp_path / "staff.json"
    pat = json.loads(medchain("keygen", "--out", str(pk), "--json").stdout)
    doc = json.loads(medchain("keygen", "--out", str(sk), "--json").stdout)
    url = ["--node", node.url]
    (tmp_path / "genesis.json").write_text((node.home / "genesis.json").read_text())  # beside the keys: the trust anchor
    medchain("staff", "register", "--key", str(sk), "--name", "Dr. F", *url)
    medchain("patient", "grant", doc["address"], "blood_pressure", "--key", str(pk), *url,
             "--genesis", str(node.home / "genesis.json"))
    medchain("patient", "upload", "--type", "blood_pressure", "--seconds", "600", "--key", str(pk), *url)
    out = json.loads(medchain("staff", "read", pat["address"], "--type", "blood_pressure", "--fhir",
                              "--key", str(sk), *url).stdout)
    b = valid(out)
    assert b["entry"] and all(codes(e["resource"]) == ["85354-9"] for e in b["entry"])
    for e in out["entry"]:
        valid(e["resource"])
    audit = json.loads(medchain("patient", "audit", "--fhir", "--key", str(pk), *url).stdout)
    (ev,) = [valid(e["resource"]) for e in audit["entry"]]
    assert ev["resourceType"] == "AuditEvent" and ev["agent"][0]["who"]["identifier"]["value"] == doc["address"]
    consents = json.loads(medchain("patient", "grants", "--fhir", "--key", str(pk), *url).stdout)
    cs = [valid(e["resource"]) for e in consents["entry"]]
    assert [c["status"] for c in cs] == ["active", "active"] and cs[1]["provision"]["type"] == "permit"
