"""The JSON shapes of state records, shared by the API's read routes and the verifying clients
(devices/verified_reads.py), which build the same shapes from proven values."""

from __future__ import annotations

from node.ipfs.cid import Cid
from node.state import CODES, keys
from node.tx import data_type_name


# The JSON shapes of state records, shared with the verifying clients (devices/verified_reads.py).
def audit_entry(entry: list, height: int) -> dict:
    reader, dt, cid, f, t, when, txid, code, *bg = entry  # 9th: break-glass reason
    return {"reader": reader.hex(), "type": data_type_name(dt), "cid": str(Cid.from_bytes(cid)) if cid else None,
            "from_ms": f, "to_ms": t, "time_ms": when, "tx": txid.hex(), "allowed": code == 0,
            "result": CODES.get(code, "unknown"), "height": height, "break_glass": bg[0] if bg else None}


def grant_entry(staff: bytes, rec: list) -> dict:
    types, expiry, height, txid = rec
    return {"staff": staff.hex(), "types": [data_type_name(t) for t in types], "expiry_ms": expiry,
            "height": height, "tx": txid.hex()}


def sealed_entry(key: bytes, raw: bytes) -> dict:
    dtype, ep = keys.sealed_key_parts(key)
    return {"type": data_type_name(dtype), "epoch": ep, "sealed": raw.hex()}


def data_entry(cid: bytes, rec: list) -> dict:
    return {"cid": str(Cid.from_bytes(cid)), "type": data_type_name(rec[1]), "epoch": rec[2],
            "size": rec[3], "t_start_ms": rec[4], "t_end_ms": rec[5], "height": rec[6], "tx": rec[7].hex()}
