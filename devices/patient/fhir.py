"""FHIR R4 (4.0.1) export: decrypted readings as Observation, the audit log as AuditEvent, grants
(and the break-glass setting) as Consent, each set in a `collection` Bundle.

Plain JSON dicts, so the client needs no FHIR library; the tests validate every resource with
`fhir.resources` (R4). Codes: LOINC for what was measured, UCUM for units, HL7 terminology for
categories, audit types and the break-glass purpose (v3-ActReason ETREAT). The phone that received
the GATT frames and encrypted them is the gateway device (R4's observation-gatewayDevice extension).
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from devices.wearable import gatt

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
GATEWAY_EXT = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
ADDRESS_SYSTEM = "urn:medchain:address"  # a medchain account: SHA-256 of its public key, hex
CID_SYSTEM = "urn:medchain:cid"
TX_SYSTEM = "urn:medchain:tx"
MG_DL_PER_MMOL_L = 18.016  # glucose (C6H12O6, 180.16 g/mol)

# kind -> (LOINC codings, category, UCUM unit, display unit)
_CODES: dict[str, tuple[list[tuple[str, str]], str, str, str]] = {
    "heart_rate": ([("8867-4", "Heart rate")], "vital-signs", "/min", "beats/minute"),
    "blood_pressure": ([("85354-9", "Blood pressure panel with all children optional")], "vital-signs",
                       "mm[Hg]", "mmHg"),
    "body_temperature": ([("8310-5", "Body temperature")], "vital-signs", "Cel", "C"),
    "spo2": ([("2708-6", "Oxygen saturation in Arterial blood"),
              ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")], "vital-signs", "%", "%"),
    "glucose": ([("2339-0", "Glucose [Mass/volume] in Blood")], "laboratory", "mg/dL", "mg/dL"),
}
_BP_COMPONENTS = [("systolic", "8480-6", "Systolic blood pressure"), ("diastolic", "8462-4", "Diastolic blood pressure")]
_TYPE_CODES = {kind: codes[0][0] for kind, (codes, *_rest) in _CODES.items()}


def instant(ms: int) -> str:
    """FHIR instant (UTC, millisecond precision) from unix milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _id(*parts: object) -> str:
    """A stable resource id (FHIR ids are at most 64 of [A-Za-z0-9-.]): a UUID5 of the parts."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "medchain:" + "/".join(map(str, parts))))


def _coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def _quantity(value: float, unit: str, code: str) -> dict:
    return {"value": round(value, 6), "unit": unit, "system": UCUM, "code": code}


def _value(value: float, unit: str, code: str) -> dict:
    """valueQuantity, or a dataAbsentReason when the device sent NaN/NRes/INF (FHIR has no NaN)."""
    if math.isfinite(value):
        return {"valueQuantity": _quantity(value, unit, code)}
    return {"dataAbsentReason": {"coding": [_coding(ABSENT, "NaN" if math.isnan(value) else "error")]}}


def patient_ref(patient: str) -> dict:
    return {"reference": f"Patient/{patient}", "identifier": {"system": ADDRESS_SYSTEM, "value": patient}}


def gateway_ref(patient: str) -> dict:
    return {"reference": f"Device/phone-{patient[:32]}", "display": "patient's phone (medchain gateway)"}


def observation(reading: gatt.Reading, patient: str, cid: str, index: int) -> dict:
    """One decoded reading as an R4 Observation (vital-signs, or laboratory for glucose)."""
    codes, category, ucum, unit = _CODES[reading.kind]
    obs: dict = {
        "resourceType": "Observation",
        "id": _id(cid, index),
        "meta": {"profile": [VITALS_PROFILE]} if category == "vital-signs" else {},
        "extension": [{"url": GATEWAY_EXT, "valueReference": gateway_ref(patient)}],
        "identifier": [{"system": CID_SYSTEM, "value": f"{cid}#{index}"}],
        "status": "final",
        "category": [{"coding": [_coding(OBS_CATEGORY, category, category.replace("-", " ").title())]}],
        "code": {"coding": [_coding(LOINC, c, d) for c, d in codes], "text": reading.kind.replace("_", " ")},
        "subject": patient_ref(patient),
        "effectiveDateTime": instant(reading.time_ms),
    }
    if not obs["meta"]:
        del obs["meta"]
    v = reading.values
    if reading.kind == "blood_pressure":
        obs["component"] = [{"code": {"coding": [_coding(LOINC, code, disp)]}, **_value(v[key], unit, ucum)}
                            for key, code, disp in _BP_COMPONENTS]
    elif reading.kind == "glucose":
        mg = v["glucose"] * (MG_DL_PER_MMOL_L if reading.unit == "mmol/L" else 1.0)
        obs.update(_value(mg, unit, ucum))
    else:
        obs.update(_value(v[reading.kind if reading.kind != "body_temperature" else "temperature"], unit, ucum))
    return obs


def bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "id": _id("bundle", *(r["id"] for r in resources)), "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


def observations(patient: str, windows: list) -> list[dict]:
    """Observations for decrypted windows (devices.patient.staff.Window: cid and (time_ms, uuid, frame) rows)."""
    out = []
    for w in windows:
        for i, (t, u, frame) in enumerate(w.readings):
            out.append(observation(gatt.decode(u, frame, t), patient, w.cid, i))
    return out


def audit_event(patient: str, read: dict) -> dict:
    """One read from GET /v1/patients/{p}/audit as an R4 AuditEvent; a break-glass read carries its
    reason (v3-ActReason) as purposeOfEvent and as the agent's purposeOfUse."""
    bg = read.get("break_glass")
    purpose = [{"coding": [_coding(ACT_REASON, bg, "emergency treatment" if bg == "ETREAT" else None)],
                "text": "BREAK-GLASS emergency read"}] if bg else []
    agent = {"who": {"identifier": {"system": ADDRESS_SYSTEM, "value": read["reader"]}}, "requestor": True}
    if purpose:
        agent["purposeOfUse"] = purpose
    what = ({"identifier": {"system": CID_SYSTEM, "value": read["cid"]}} if read.get("cid")
            else {"display": f"{read['type']} from {read['from_ms']} to {read['to_ms']} ms"})
    ev: dict = {
        "resourceType": "AuditEvent",
        "id": _id("audit", read["tx"]),
        "type": _coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
        "subtype": [_coding("http://hl7.org/fhir/restful-interaction", "read", "read")],
        "action": "R",
        "recorded": instant(read["time_ms"]),
        "outcome": "0" if read["allowed"] else "4",
        "outcomeDesc": read["result"],
        "agent": [agent],
        "source": {"site": "medchain", "observer": {"display": "medchain ledger (committed read transaction)"}},
        "entity": [
            {"what": patient_ref(patient),
             "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
             "role": _coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient")},
            {"what": what, "type": _coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2",
                                           "System Object"),
             "detail": [{"type": "medchain-tx", "valueString": read["tx"]},
                        {"type": "data-type", "valueString": read["type"]},
                        {"type": "height", "valueString": str(read["height"])}]},
        ],
    }
    if purpose:
        ev["purposeOfEvent"] = purpose
    return ev


def consent(patient: str, grant: dict, now_ms: int) -> dict:
    """One grant from GET /v1/patients/{p}/grants as an R4 Consent: a permit for the staff member
    to access the granted types (LOINC), inactive once revoked (no types) or expired."""
    expiry = grant["expiry_ms"]
    active = bool(grant["types"]) and (expiry == 0 or now_ms < expiry)
    provision: dict = {
        "type": "permit",
        "actor": [{"role": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                               "IRCP", "information recipient")]},
                   "reference": {"identifier": {"system": ADDRESS_SYSTEM, "value": grant["staff"]}}}],
        "action": [{"coding": [_coding("http://terminology.hl7.org/CodeSystem/consentaction", "access")]}],
    }
    if grant["types"]:
        provision["code"] = [{"coding": [_coding(LOINC, _TYPE_CODES[t])], "text": t} for t in grant["types"]]
    if expiry:
        provision["period"] = {"end": instant(expiry)}
    return {**_consent_base(patient, _id("consent", grant["tx"]), active, grant["tx"]), "provision": provision}


def release_consent(patient: str, staff: str, rel: dict, now_ms: int) -> dict:
    """An emergency release (a `released` entry of a grant) as its own R4 Consent: a time-limited
    permit, for emergency treatment only, to one staff member for one type's released key epochs.
    It is never folded into the grant's Consent: the two end apart."""
    provision = {
        "type": "permit",
        "period": {"end": instant(rel["expiry_ms"])},
        "actor": [{"role": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                               "IRCP", "information recipient")]},
                   "reference": {"identifier": {"system": ADDRESS_SYSTEM, "value": staff}}}],
        "action": [{"coding": [_coding("http://terminology.hl7.org/CodeSystem/consentaction", "access")]}],
        "purpose": [_coding(ACT_REASON, "ETREAT", "emergency treatment")],
        "code": [{"coding": [_coding(LOINC, _TYPE_CODES[rel["type"]])], "text": rel["type"]}],
        "data": [{"meaning": "related", "reference": {"display": f"key epoch {e}"}} for e in rel["epochs"]],
    }
    c = _consent_base(patient, _id("release", rel["tx"]), now_ms < rel["expiry_ms"], rel["tx"])
    return {**c, "provision": provision}


def break_glass_consent(patient: str, enabled: bool) -> dict:
    """The patient's break-glass setting as a Consent: deny (or permit) emergency-treatment access."""
    c = _consent_base(patient, _id("break-glass", patient), True, None)
    c["provision"] = {"type": "permit" if enabled else "deny",
                      "purpose": [_coding(ACT_REASON, "ETREAT", "emergency treatment")]}
    return c


def _consent_base(patient: str, rid: str, active: bool, tx: str | None) -> dict:
    c = {
        "resourceType": "Consent",
        "id": rid,
        "status": "active" if active else "inactive",
        "scope": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")]},
        "category": [{"coding": [_coding(LOINC, "59284-0", "Patient Consent")]}],
        "patient": patient_ref(patient),
        "policyRule": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN")]},
    }
    if tx:
        c["identifier"] = [{"system": TX_SYSTEM, "value": tx}]
    return c
