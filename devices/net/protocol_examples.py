"""The worked examples of docs/PROTOCOL.md (section 9), generated from fixed seeds by the reference code.

Every example is a named value: bytes (a ```hex NAME``` block in the document), an annotated msgpack
dump (```msgpack NAME```) or a JSON value (```json NAME```). `tests/test_protocol_doc.py`
regenerates them and compares them with the document, so the document cannot drift from the code;
`python -m devices.net.protocol_examples --write docs/PROTOCOL.md` refills the blocks after a deliberate
change. Nothing here is random: identities come from `Identity.from_seed`, ECDSA nonces are RFC 6979,
the AES-GCM nonce is fixed, and the sealed boxes use fixed ephemeral keys (a real phone draws them
at random; the format is the same and the staff key opens them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.bindings import crypto_box
from nacl.public import PrivateKey

from node import merkle
from node.block import Block, Header, vote_digest
from node.crypto import aead, ecdsa
from node.crypto.keys import Identity
from node.genesis import Genesis, IssuerInfo, Params, ValidatorInfo
from node.ipfs.cid import cid_v1_raw
from node.sidecar import encode_submission
from node.state import apply_block, genesis_state_root, keys, smt
from node.state.rules import Rules
from node.tx import Grant, Policy, Profile, Read, Release, SealedKey, Tx, Write
from node.tx.credential import credential_digest, issue, to_json
from node.tx.requests import blob_request_digest, blob_upload_digest
from node.wire import encode

CHAIN_ID = "medchain-example"
T0 = 1_767_225_600_000  # block 1's time: 2026-01-01T00:00:00Z
HR = 1  # heart_rate
BP = 2  # blood_pressure
HEART_RATE_MEASUREMENT = 0x2A37  # the GATT characteristic a reading's frame came from (an integer)


def seed_identity(name: str) -> Identity:
    return Identity.from_seed(b"example/" + name.encode())


def sealed_box(recipient_public: bytes, message: bytes, ephemeral_secret: bytes) -> bytes:
    """libsodium's crypto_box_seal with a given ephemeral key (it draws one at random):
    epk || crypto_box(message, nonce = BLAKE2b-192(epk || recipient_pk), recipient_pk, esk)."""
    epk = bytes(PrivateKey(ephemeral_secret).public_key)
    nonce = hashlib.blake2b(epk + recipient_public, digest_size=24).digest()
    return epk + crypto_box(message, nonce, recipient_public, ephemeral_secret)


def annotate(data: bytes, labels: list[str] | None = None) -> str:
    """A msgpack value, one token a line: its bytes in hex, then what they are. `labels` name the
    elements of the outermost array. Only the canonical subset of section 1 (and map-free) occurs."""
    lines: list[str] = []

    def line(depth: int, hexs: str, what: str) -> None:
        left = "  " * depth + hexs
        lines.append(f"{left:<40} {what}" if len(left) < 40 else f"{left}  {what}")

    def item(pos: int, depth: int, label: str) -> int:
        b = data[pos]
        tag = f"{label}: " if label else ""
        if b <= 0x7F or b >= 0xE0 or b in (0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3):
            n = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}.get(b, 0)
            raw = data[pos:pos + 1 + n]
            val = b if b <= 0x7F else b - 256 if b >= 0xE0 else int.from_bytes(raw[1:], "big", signed=b >= 0xD0)
            line(depth, raw.hex(), f"{tag}int {val}" + (f" (0x{val:x})" if 16 <= val < 1 << 16 else ""))
            return pos + 1 + n
        if b in (0xC0, 0xC2, 0xC3):
            line(depth, f"{b:02x}", tag + {0xC0: "nil", 0xC2: "false", 0xC3: "true"}[b])
            return pos + 1
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n, hl = (b & 15, 1) if b <= 0x9F else (int.from_bytes(data[pos + 1:pos + (3 if b == 0xDC else 5)], "big"),
                                                 3 if b == 0xDC else 5)
            line(depth, data[pos:pos + hl].hex(), f"{tag}array({n})")
            pos += hl
            for _ in range(n):
                pos = item(pos, depth + 1, "")
            return pos
        if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
            hl = {0xD9: 2, 0xDA: 3, 0xDB: 5, 0xC4: 2, 0xC5: 3, 0xC6: 5}.get(b, 1)
            n = b & 31 if hl == 1 else int.from_bytes(data[pos + 1:pos + hl], "big")
            body = data[pos + hl:pos + hl + n]
            head = data[pos:pos + hl].hex()
            if b in (0xC4, 0xC5, 0xC6):
                if n <= 16:
                    line(depth, head + " " + body.hex() if n else head, f"{tag}bin({n})")
                else:
                    line(depth, head, f"{tag}bin({n})")
                    for i in range(0, n, 32):
                        lines.append("  " * (depth + 1) + body[i:i + 32].hex())
            else:
                line(depth, head + " " + body.hex(), f"{tag}str {body.decode()!r}".replace("'", '"'))
            return pos + hl + n
        raise ValueError(f"byte {b:#04x} at {pos} is outside the canonical subset")

    if labels is not None and data[:1] and 0x90 <= data[0] <= 0x9F:
        n = data[0] & 15
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for an array of {n}")
        line(0, data[:1].hex(), f"array({n})")
        pos = 1
        for lb in labels:
            pos = item(pos, 1, lb)
    else:
        pos = item(0, 0, "")
    if pos != len(data):
        raise ValueError("trailing bytes")
    return "\n".join(lines)


@dataclass(frozen=True)
class Msgpack:
    """An example shown as an annotated dump of its msgpack bytes."""

    data: bytes
    labels: tuple[str, ...] | None = None

    def render(self) -> str:
        return annotate(self.data, list(self.labels) if self.labels is not None else None)


Example = bytes | Msgpack | dict | list


_TX_HEAD = ("version", "kind", "chain_id", "sender", "nonce")
_FIELDS = {
    "profile": ("name", "role", "org", "x25519_public", "credential"),
    "grant": ("staff", "types", "expiry_ms", "keys"),
    "policy": ("break_glass",),
    "write": ("type", "cid", "size", "epoch", "t_start_ms", "t_end_ms"),
    "read": ("patient", "type", "cid", "t_from_ms", "t_to_ms"),
    "break-glass-read": ("patient", "type", "cid", "t_from_ms", "t_to_ms", "reason"),
    "release": ("staff", "type", "expiry_ms", "keys"),
    "revoke": ("staff", "types", "expiry_ms", "keys"),
}


def _tree_get(nodes: dict[bytes, bytes]) -> smt.GetNode:
    return nodes.get


def examples() -> dict[str, Example]:  # one linear story, told in order
    out: dict[str, Example] = {}
    patient, staff, issuer = seed_identity("patient"), seed_identity("staff"), seed_identity("issuer")
    rules = Rules(frozenset({issuer.public_key}))
    validators = [seed_identity(f"validator-{i}") for i in range(4)]
    vkeys = [v.public_key for v in validators]

    # ---- identities and the key file (`medchain keygen` writes this JSON) ----
    out["keys/patient-file"] = patient.to_json()
    out["keys/staff-public"] = staff.public_key
    out["keys/staff-address"] = staff.address
    out["keys/staff-x25519-public"] = staff.box_public

    # ---- data key, the sealed keys of the grant, the blob ----
    from devices.patient.envelope import aad, data_key, master_secret
    master = master_secret(patient.secret, CHAIN_ID)
    k_hr, k_bp = data_key(master, HR, 0), data_key(master, BP, 0)
    out["blob/data-key-hr-0"] = k_hr
    sealed_hr = sealed_box(staff.box_public, k_hr, ecdsa.sha256(b"example/ephemeral/1"))
    sealed_bp = sealed_box(staff.box_public, k_bp, ecdsa.sha256(b"example/ephemeral/2"))
    out["blob/sealed-hr-0"] = sealed_hr

    t_start, t_end = T0 - 60_000, T0 - 30_000
    readings = [[t_start, HEART_RATE_MEASUREMENT, b"\x00\x48"], [t_end, HEART_RATE_MEASUREMENT, b"\x00\x4a"]]
    plaintext = encode([1, readings])
    out["blob/plaintext"] = Msgpack(plaintext, ("version", "rows"))
    ad = aad(CHAIN_ID, patient.address, HR, 0, t_start, t_end)
    out["blob/aad"] = Msgpack(ad, ("domain", "chain_id", "patient", "type", "epoch", "t_start_ms", "t_end_ms"))
    nonce = ecdsa.sha256(b"example/aes-gcm-nonce")[:aead.NONCE_LEN]
    blob = nonce + aead.seal(k_hr, nonce, plaintext, ad)
    out["blob/blob"] = blob
    cid = cid_v1_raw(blob)
    out["blob/cid"] = cid.to_bytes()
    out["blob/cid-string"] = {"cid": str(cid)}

    # ---- a clinician credential, by the genesis's issuer ----
    cred = issue(issuer, CHAIN_ID, staff.address, T0 + 365 * 86_400_000)
    out["credential/digest"] = credential_digest(CHAIN_ID, staff.address, cred.not_after_ms)
    out["credential/json"] = to_json(cred)
    # the key the patient releases to the emergency reader (block 1's break-glass read)
    sealed_hr_rel = sealed_box(staff.box_public, k_hr, ecdsa.sha256(b"example/ephemeral/3"))

    # ---- block 1: one transaction of each kind ----
    bodies: list[tuple[str, Identity, int, Any]] = [
        ("profile", staff, 1, Profile("Dr. Ada", "physician", "General Hospital", staff.box_public, cred)),
        ("grant", patient, 1, Grant(staff.address, (HR, BP), 0, (SealedKey(HR, 0, sealed_hr), SealedKey(BP, 0, sealed_bp)))),
        ("policy", patient, 2, Policy(True)),
        ("write", patient, 3, Write(HR, cid.to_bytes(), len(blob), 0, t_start, t_end)),
        ("read", staff, 2, Read(patient.address, HR, cid.to_bytes(), t_start, t_end)),
        ("break-glass-read", staff, 3, Read(patient.address, HR, b"", T0 - 3_600_000, T0, "ETREAT")),
        ("release", patient, 4, Release(staff.address, HR, T0 + 86_400_000, (SealedKey(HR, 0, sealed_hr_rel),))),
    ]
    txs: list[Tx] = []
    for name, who, nonce_, body in bodies:
        tx = Tx.build(who, CHAIN_ID, nonce_, body)
        txs.append(tx)
        out[f"tx/{name}/payload"] = Msgpack(tx.payload, _TX_HEAD + _FIELDS[name])
        out[f"tx/{name}/digest"] = tx.digest
        out[f"tx/{name}/tx"] = Msgpack(tx.raw, ("payload", "signature"))
        out[f"tx/{name}/id"] = tx.id
    write = txs[3]

    # ---- submissions: a write with its sidecar, and a batch ----
    out["submit/tx-with-sidecar"] = Msgpack(encode_submission(write.raw, blob), ("tx", "sidecar"))
    out["submit/batch"] = encode([txs[0].raw, [write.raw, blob]])

    # ---- signed blob requests ----
    t_req = T0 + 5_000
    asked = vkeys[1]  # the request goes to validator 1: it names that validator's key
    out["request/blob-get-digest"] = blob_request_digest(CHAIN_ID, asked, cid.to_bytes(), txs[4].id, t_req)
    out["request/blob-get-headers"] = {
        "X-Medchain-Pubkey": staff.public_key.hex(), "X-Medchain-Time": str(t_req),
        "X-Medchain-Read": txs[4].id.hex(),
        "X-Medchain-Signature": staff.sign(blob_request_digest(CHAIN_ID, asked, cid.to_bytes(), txs[4].id,
                                                               t_req)).hex()}
    out["request/blob-put-digest"] = blob_upload_digest(CHAIN_ID, asked, hashlib.sha256(blob).digest(), len(blob), t_req)

    # ---- execution of block 1 on the empty state, and its header ----
    state: dict[bytes, bytes] = {}
    nodes: dict[bytes, bytes] = {}
    out["state/genesis-root"] = genesis_state_root(CHAIN_ID, vkeys)
    res1 = apply_block(state.get, txs, 1, T0, _tree_get(nodes), rules)
    assert res1.codes == [0] * len(txs), res1.codes
    state.update(res1.writes)
    nodes.update(res1.nodes)
    out["state/block1-writes"] = [[k.hex(), v.hex()] for k, v in sorted(res1.writes.items())]
    ids = [t.id for t in txs]
    out["merkle/block1-leaves"] = [hashlib.sha256(b"\x00" + i).hexdigest() for i in ids]
    h1 = Header(CHAIN_ID, 1, bytes(32), 0, 1, T0, merkle.root(ids), res1.state_root, 0)
    out["block/header-1"] = Msgpack(h1.encode(), ("version", "chain_id", "height", "prev_hash", "view", "seq",
                                                  "time_ms", "tx_root", "state_root", "proposer"))
    out["block/hash-1"] = h1.hash
    vote1 = vote_digest(CHAIN_ID, 0, 1, h1.hash)
    out["block/vote-1"] = vote1
    cert1 = tuple((i, validators[i].sign(vote1)) for i in (0, 1, 2))
    out["block/certificate-1"] = encode([list(c) for c in cert1])
    b1 = Block(h1, tuple(t.raw for t in txs), cert1, 0)
    out["block/block-1"] = b1.encode()

    # ---- inclusion proof of the write (index 3 of 7), as GET /v1/tx/{id} answers ----
    path = merkle.proof(ids, 3)
    assert merkle.verify(write.id, 3, len(ids), path, h1.tx_root)
    out["api/tx-committed"] = {
        "status": "committed", "height": 1, "index": 3, "code": 0, "result": "ok", "block_hash": h1.hash.hex(),
        "tx_root": h1.tx_root.hex(), "tx_count": len(ids), "proof": [p.hex() for p in path],
        "header": h1.encode().hex(), "certificate": [[i, sig.hex()] for i, sig in cert1], "cert_view": 0,
        "receipt": encode([h1.encode(), [list(c) for c in cert1], 0,
                           [[state[keys.receipt(write.id)], smt.prove(_tree_get(nodes), keys.receipt(write.id)).encode()]]]
                          ).hex(),
        "available": True, "blob": {"cid": str(cid), "holders": 4, "held_here": True, "quorum": 3, "available": True}}

    # ---- the /keys route's JSON after block 1 ----
    from node.api.shapes import sealed_entry
    found = sorted((k, v) for k, v in state.items() if k.startswith(keys.sealed_keys_prefix(patient.address, staff.address)))
    out["api/keys"] = {"keys": [sealed_entry(k, v) for k, v in found]}

    # ---- block 2: a revoke, and the state-root step it makes ----
    revoke = Tx.build(patient, CHAIN_ID, 5, Grant(staff.address, (), 0, ()))
    out["tx/revoke/payload"] = Msgpack(revoke.payload, _TX_HEAD + _FIELDS["revoke"])
    out["tx/revoke/tx"] = Msgpack(revoke.raw, ("payload", "signature"))
    res2 = apply_block(state.get, [revoke], 2, T0 + 1_000, _tree_get(nodes), rules)
    assert res2.codes == [0]
    out["state/block2-writes"] = Msgpack(encode([[k, v] for k, v in sorted(res2.writes.items())]))
    out["state/block2-leaves"] = [[hashlib.sha256(k).hexdigest(), hashlib.sha256(v).hexdigest()]
                                  for k, v in sorted(res2.writes.items())]
    out["state/root-1"] = res1.state_root
    out["state/root-2"] = res2.state_root
    state.update(res2.writes)
    nodes.update(res2.nodes)
    assert smt.naive_root(state) == res2.state_root
    h2 = Header(CHAIN_ID, 2, h1.hash, 0, 2, T0 + 1_000, merkle.root([revoke.id]), res2.state_root, 0)
    out["block/header-2"] = h2.encode()
    cert2 = tuple((i, validators[i].sign(vote_digest(CHAIN_ID, 0, 2, h2.hash))) for i in (1, 2, 3))

    # ---- state-tree proofs against block 2's root ----
    k_epoch = keys.epoch(patient.address, HR)
    p_in = smt.prove(_tree_get(nodes), k_epoch)
    assert smt.verify(res2.state_root, k_epoch, state[k_epoch], p_in)
    out["proof/member-key"] = k_epoch
    out["proof/member"] = Msgpack(p_in.encode(), ("levels", "leaf"))
    k_absent = keys.nonce(bytes(32))
    p_out = smt.prove(_tree_get(nodes), k_absent)
    assert smt.verify(res2.state_root, k_absent, None, p_out)
    out["proof/absent-key"] = k_absent
    out["proof/absent"] = Msgpack(p_out.encode(), ("levels", "leaf"))
    out["proof/bundle"] = encode([h2.encode(), [list(c) for c in cert2], 0,
                                  [[state[k_epoch], p_in.encode()], [None, p_out.encode()]]])

    # ---- GET /v1/genesis of the example network ----
    from node.p2p.identity import peer_id_from_secret
    gen = Genesis(CHAIN_ID, T0 - 86_400_000, tuple(
        ValidatorInfo(v.public_key.hex(), f"127.0.0.1:{8545 + i}",
                      f"/ip4/127.0.0.1/tcp/{9545 + i}/p2p/{peer_id_from_secret(v.p2p_secret)}")
        for i, v in enumerate(validators)), Params(), (IssuerInfo("General Hospital", issuer.public_key.hex()),))
    out["api/genesis"] = gen.document()
    return out


# ---- the document's labelled blocks ---------------------------------------------------------------

_FENCE = re.compile(r"^```(hex|msgpack|json) ([\w./-]+)\n(.*?)^```$", re.M | re.S)


def render(kind: str, value: Example) -> str:
    """The body of a labelled block (without its fences)."""
    if kind == "hex":
        if not isinstance(value, bytes):
            raise TypeError("a hex block needs bytes")
        h = value.hex()
        return "\n".join(h[i:i + 64] for i in range(0, len(h), 64)) or "(empty)"
    if kind == "msgpack":
        return (value if isinstance(value, Msgpack) else Msgpack(value if isinstance(value, bytes) else encode(value))).render()
    if isinstance(value, list) and value and all(isinstance(x, list) for x in value):
        return "[\n " + ",\n ".join(json.dumps(x) for x in value) + "\n]"  # one pair a line
    return json.dumps(value, indent=1)


def blocks(doc: str) -> list[tuple[str, str, str]]:
    """(kind, name, body) of each labelled block in the document."""
    return [(m.group(1), m.group(2), m.group(3).rstrip("\n")) for m in _FENCE.finditer(doc)]


def refill(doc: str, ex: dict[str, Example]) -> str:
    def sub(m: re.Match[str]) -> str:
        kind, name = m.group(1), m.group(2)
        if name not in ex:
            raise KeyError(f"the document names an unknown example {name!r}")
        return f"```{kind} {name}\n{render(kind, ex[name])}\n```"
    return _FENCE.sub(sub, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", metavar="DOC", help="refill the labelled blocks of this document in place")
    args = ap.parse_args(argv)
    ex = examples()
    if args.write:
        p = Path(args.write)
        p.write_text(refill(p.read_text(), ex))
        missing = sorted(set(ex) - {n for _, n, _ in blocks(p.read_text())})
        if missing:
            print("examples the document does not show: " + ", ".join(missing), file=sys.stderr)
            return 1
        return 0
    for name, value in ex.items():
        kind = "json" if isinstance(value, dict | list) else "msgpack" if isinstance(value, Msgpack) else "hex"
        print(f"```{kind} {name}\n{render(kind, value)}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
