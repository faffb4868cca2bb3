"""The JSON shapes of state records, shared by the API's read routes and the verifying clients
(devices/patient/verified_reads.py), which build the same shapes from proven values."""

from __future__ import annotations

from node.ipfs.cid import Cid
from node.state import CODES, Code, keys
from node.state.records import AuditRec, BlobRec, GrantRec, ProfileRec
from node.tx import data_type_name


# The JSON shapes of state records, shared with the verifying clients (devices/patient/verified_reads.py).
def audit_entry(e: AuditRec, height: int, seq: int) -> dict:
    return {"seq": seq, "reader": e.reader.hex(), "type": data_type_name(e.dtype),
            "cid": str(Cid.from_bytes(e.cid)) if e.cid else None, "from_ms": e.t_from_ms, "to_ms": e.t_to_ms,
            "time_ms": e.time_ms, "tx": e.tx.hex(), "allowed": e.code == Code.OK,
            "result": CODES.get(e.code, "unknown"), "height": height, "break_glass": e.reason}


def grant_entry(staff: bytes, g: GrantRec) -> dict:
    return {"staff": staff.hex(), "types": [data_type_name(t) for t in g.types], "expiry_ms": g.expiry_ms,
            "height": g.height, "tx": g.tx.hex(),
            "released": [{"type": data_type_name(r.dtype), "expiry_ms": r.expiry_ms, "epochs": r.epochs,
                          "tx": r.tx.hex()} for r in g.released]}


def profile_entry(p: ProfileRec) -> dict:
    return {"name": p.name, "role": p.role, "org": p.org, "x25519_public": p.box_public.hex(),
            "public_key": p.public_key.hex(), "height": p.height,
            "credential": {"issuer": p.issuer.hex(), "until_ms": p.credential_until_ms} if p.issuer else None}


def sealed_entry(key: bytes, raw: bytes) -> dict:
    dtype, ep = keys.sealed_key_parts(key)
    return {"type": data_type_name(dtype), "epoch": ep, "sealed": raw.hex()}


def data_entry(cid: bytes, b: BlobRec) -> dict:
    return {"cid": str(Cid.from_bytes(cid)), "type": data_type_name(b.dtype), "epoch": b.epoch,
            "size": b.size, "t_start_ms": b.t_start_ms, "t_end_ms": b.t_end_ms, "height": b.height,
            "tx": b.tx.hex()}
