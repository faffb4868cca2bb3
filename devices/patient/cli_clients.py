"""`medchain patient ...` and `medchain staff ...`: the phone and the staff client from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from devices.patient.client import NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.patient.verified_reads import VerifiedReader
from node.crypto.keys import Identity
from node.genesis import load_checked
from node.tx.model import BREAK_GLASS_REASONS, DATA_TYPES, data_type_name

DEFAULT_NODE = "http://127.0.0.1:8545"


def _print(args: argparse.Namespace, obj: object, text: str) -> None:
    print(json.dumps(obj, indent=1) if args.json else text)


def _genesis_file(args: argparse.Namespace) -> Path | None:
    """--genesis, else the genesis.json beside the key file: the trust anchor. Never one found in the
    working directory, which anyone who can write there (a shared or downloaded folder) could swap."""
    if args.genesis:
        return Path(args.genesis)
    p = Path(args.key).parent / "genesis.json"
    return p if p.exists() else None


async def _connect(args: argparse.Namespace,
                   seals: str = "") -> tuple[NodeClient, str, list[bytes], VerifiedReader]:
    """The client, chain id and validator keys from the genesis file, and a reader that checks every
    state read by proof and certificate and falls back across the genesis validators. Without a
    genesis file: refused (no client trusts a single validator); `seals` names a command that seals
    the patient's data keys, for the refusal to say so."""
    c = NodeClient(args.node)
    await c.__aenter__()
    gfile = _genesis_file(args)
    try:
        if gfile is None:  # no trust anchor: every answer would be one validator's word
            why = (f"`patient {seals}` seals your data keys to a staff member's key read from the chain; without the "
                   "network's genesis that key is one validator's word, and a lying validator could put its own there"
                   if seals else "the network's genesis is this client's trust anchor: every commit and every state "
                   "read is checked against its validator keys")
            raise ValueError(f"{why}. Give --genesis FILE (or keep the genesis.json beside your key file)")
        # the trust anchor: checked as a node checks it (its recorded hash, each validator key valid
        # and listed once, so no one key counts twice towards a certificate's quorum)
        gen = load_checked(gfile)
    except BaseException:
        await c.close()
        raise
    urls = [args.node] + [u for v in gen.validators if (u := f"http://{v.api}") != args.node.rstrip("/")]
    return c, gen.chain_id, gen.validator_keys, VerifiedReader(urls, gen.chain_id, gen.validator_keys, session=c.session)


def _refusals(reader: VerifiedReader) -> str:
    if not reader.refused:
        return ""
    return "\n".join(f"warning: refused an answer: {r}" for r in reader.refused) + "\n"


def _addr(s: str) -> bytes:
    b = bytes.fromhex(s)
    if len(b) != 32:
        raise ValueError("an address is 32 bytes of hex")
    return b


# what seals the patient's data keys to a staff member's X25519 key read from the chain (a grant; a
# revoke, which re-grants the others under new keys; an emergency release)
SEALS_KEYS = ("grant", "revoke", "break-glass release")


def patient_cmd(args: argparse.Namespace) -> int:
    ident = Identity.load(args.key)
    command = f"{args.action} release" if args.action == "break-glass" and args.setting == "release" else args.action

    owed: dict[str, str] = {}  # grantees the new keys of a rotation did not reach

    async def go() -> tuple[object, str]:
        c, chain, vals, reader = await _connect(args, command if command in SEALS_KEYS else "")
        try:
            ph = Phone(ident, c, chain, vals, reader=reader, record=Path(args.key).with_suffix(".record.json"))
            try:
                return await act(ph)
            finally:
                owed.update(ph.rekey_failures if ph.rekey_pending is not None else {})
        finally:
            print(_refusals(reader), end="", file=sys.stderr)
            await c.close()

    async def act(ph: Phone) -> tuple[object, str]:
        if args.action == "grant":
            txid = await ph.grant(_addr(args.staff), args.types, args.expiry_ms)
            return {"tx": txid, "staff": args.staff, "types": args.types}, f"granted {args.types}: tx {txid}"
        if args.action == "revoke":
            txid = await ph.revoke(_addr(args.staff))
            return {"tx": txid}, f"revoked: tx {txid}"
        if args.action == "upload":
            from devices.wearable.wearables import make_wearable
            now = int(time.time() * 1000)
            w = make_wearable(args.type, "cli", args.seed)
            frames = list(w.frames_between(now - args.seconds * 1000, now))
            res = await ph.write_window(args.type, frames)
            return ({"tx": res.txid, "cid": res.cid, "epoch": res.epoch, "size": res.size, "readings": len(frames)},
                    f"uploaded {len(frames)} {args.type} readings: cid {res.cid} tx {res.txid}")
        if args.action == "break-glass":
            if args.setting == "release":
                return await _release(args, ph)
            txid = await ph.set_break_glass(args.setting == "on")
            return {"tx": txid, "break_glass": args.setting == "on"}, f"break-glass {args.setting}: tx {txid}"
        if args.action == "grants":
            return await _grants(args, ph.reads, ph.address)
        return await _audit(args, ph.reads, ph.address)
    obj, text = asyncio.run(go())
    _print(args, obj, text)
    if owed:  # the rotation committed; some grantees lack its new key until the next run re-seals it
        print("the new data keys did not reach " + "; ".join(f"{s}: {why}" for s, why in owed.items())
              + ": they are sent again at the phone's next sync (its next grant, revoke or upload)", file=sys.stderr)
        return 1
    return 0


async def _release(args: argparse.Namespace, ph: Phone) -> tuple[object, str]:
    """Release keys to emergency readers, each plan shown first and confirmed by the patient."""
    plans = await ph.plan_release()
    if not plans:
        return {"released": [], "tx": []}, "no emergency read is waiting for keys"
    lines = ["Emergency (break-glass) reads of your data wait for keys. Releasing lets each reader decrypt,",
             "until the time shown, only the data its read covered:"]
    for p in plans:
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(p.expiry_ms / 1000))
        lines.append(f"  {p.name or '?'} ({p.org or 'no organisation'}, {p.staff[:16]}..., credential issuer "
                     f"{p.issuer[:16] or 'none'}...): {data_type_name(p.dtype)}, key epochs {p.epochs}, until {until}")
    print("\n".join(lines), file=sys.stderr)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("releasing keys needs your confirmation: run it at a terminal, or pass --yes")
        if input("Release these keys? [y/N] ").strip().lower() not in ("y", "yes"):
            return {"released": [], "tx": []}, "nothing released"
    txids = await ph.release(plans)
    return ({"released": [p.to_json() for p in plans], "tx": txids},
            f"released keys to {len(plans)} emergency reader(s): tx {', '.join(txids)}")


async def _audit(args: argparse.Namespace, c: NodeClient | VerifiedReader, patient: bytes) -> tuple[object, str]:
    """The audit log; break-glass reads come first under a banner, so they cannot be missed."""
    log = await c.audit(patient)
    reads, emergency = log["reads"], log["break_glass"]
    if args.fhir:
        from devices.patient import fhir
        b = fhir.bundle([fhir.audit_event(patient.hex(), r) for r in reads])
        return b, json.dumps(b, indent=1)

    def line(r: dict) -> str:
        flag = f"  !! BREAK-GLASS ({r['break_glass']})" if r["break_glass"] else ""
        return (f"{r['time_ms']}  {r['reader'][:16]}…  {r['type']:16} {'allowed' if r['allowed'] else 'DENIED'}"
                f"  {r['cid'] or 'range'}{flag}")
    text = []
    if emergency:
        text += [f"!! {len(emergency)} EMERGENCY (BREAK-GLASS) READ(S) OF YOUR DATA !!", *map(line, emergency), ""]
    text += [line(r) for r in reads]
    return {"reads": reads, "break_glass": emergency}, "\n".join(text) or "no reads"


async def _grants(args: argparse.Namespace, c: NodeClient | VerifiedReader, patient: bytes) -> tuple[object, str]:
    gs = (await c.grants(patient))["grants"]
    bg = (await c.account(patient))["break_glass"]
    if args.fhir:
        from devices.patient import fhir
        now = int(time.time() * 1000)
        b = fhir.bundle([fhir.consent(patient.hex(), g, now) for g in gs]
                        + [fhir.release_consent(patient.hex(), g["staff"], r, now) for g in gs for r in g["released"]]
                        + [fhir.break_glass_consent(patient.hex(), bg)])
        return b, json.dumps(b, indent=1)
    lines = [f"{g['staff'][:16]}…  {', '.join(g['types']) or '(revoked)'}  expiry {g['expiry_ms'] or 'never'}"
             for g in gs]
    lines += [f"{g['staff'][:16]}…  EMERGENCY RELEASE {r['type']} epochs {r['epochs']}  until {r['expiry_ms']}"
              for g in gs for r in g["released"]]
    return {"grants": gs, "break_glass": bg}, "\n".join([*lines, f"break-glass: {'on' if bg else 'off'}"])



def staff_cmd(args: argparse.Namespace) -> int:
    ident = Identity.load(args.key)

    async def go() -> tuple[object, str]:
        c, chain, vals, reader = await _connect(args)
        try:
            st = Staff(ident, c, chain, reader=reader, validators=vals)
            if args.action == "register":
                cred = None
                if args.credential:
                    from node.tx.credential import from_json
                    cred = from_json(json.loads(Path(args.credential).read_text()))
                txid = await st.register(args.name, args.role, args.org, cred)
                return {"tx": txid, "address": st.address.hex()}, f"registered {st.address.hex()}: tx {txid}"
            from devices.wearable.gatt import decode
            wins = await st.read(_addr(args.patient), args.type, args.cid, break_glass=args.break_glass or "")
            sealed = [w.cid for w in wins if w.sealed]
            refused = {w.cid: w.refused for w in wins if w.refused}
            notes = [f"break-glass: {len(sealed)} window(s) fetched but no data key sealed to you yet; the "
                     "patient's phone releases keys for emergency reads (`medchain patient break-glass release`)"
                     ] if sealed else []
            notes += [f"break-glass: window {c} refused: {why}" for c, why in refused.items()]
            note = "\n".join(notes)
            if args.fhir:
                from devices.patient import fhir
                b = fhir.bundle(fhir.observations(args.patient, wins))
                return b, json.dumps(b, indent=1) + (f"\n{note}" if note else "")
            rows = [{"time_ms": t, **decode(u, f, t).values} for w in wins for t, u, f in w.readings]
            return ({"windows": len(wins), "readings": rows, "sealed": sealed, "refused": refused},
                    "\n".join([*(json.dumps(r) for r in rows), *([note] if note else [])]))
        finally:
            print(_refusals(reader), end="", file=sys.stderr)
            await c.close()
    obj, text = asyncio.run(go())
    _print(args, obj, text)
    return 0


def issuer_cmd(args: argparse.Namespace) -> int:
    """An organisation vouches for a clinician: a credential for one staff address on one chain."""
    from node.tx.credential import issue, to_json
    ident = Identity.load(args.key)
    if args.genesis:
        gen = load_checked(args.genesis)
        chain = gen.chain_id
        if ident.public_key not in gen.rules.issuers:
            raise ValueError(f"this key ({ident.public_key.hex()}) is not an issuer in {args.genesis}: the chain "
                             "would refuse its credentials")
    elif args.chain_id:
        chain = args.chain_id
    else:
        raise ValueError("name the network: --genesis FILE (checked) or --chain-id ID")
    until = int(time.time() * 1000) + int(args.days * 86_400_000)
    cred = to_json(issue(ident, chain, _addr(args.staff), until))
    doc = {**cred, "staff": args.staff, "chain_id": chain}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    _print(args, doc, f"wrote {args.out}" if args.out else json.dumps(doc, indent=1))
    return 0


def register(sub: argparse._SubParsersAction, add) -> None:
    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--key", required=True, help="key file (from `medchain keygen`)")
        sp.add_argument("--node", default=DEFAULT_NODE, help="validator API URL")
        sp.add_argument("--genesis", help="the network's genesis.json (required): every commit and state read is "
                                          "checked by proof and certificate against it, across its validators "
                                          "(default: the genesis.json beside the key file)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("patient", patient_cmd, "The patient's phone: grant, revoke, upload readings, audit reads.")
    ps = p.add_subparsers(dest="action", required=True)
    g = ps.add_parser("grant", help="grant a staff member exactly these data types (replaces their grant)")
    g.add_argument("staff", help="staff address (hex)")
    g.add_argument("types", nargs="+", choices=list(DATA_TYPES))
    g.add_argument("--expiry-ms", type=int, default=0, help="unix time in ms when the grant lapses (0: never)")
    r = ps.add_parser("revoke", help="revoke every type from a staff member (rotates the data keys)")
    r.add_argument("staff")
    u = ps.add_parser("upload", help="encrypt and record a window of readings from an emulated wearable")
    u.add_argument("--type", required=True, choices=list(DATA_TYPES))
    u.add_argument("--seconds", type=int, default=60, help="length of the window")
    u.add_argument("--seed", type=int, default=1)
    a = ps.add_parser("audit", help="list every read of your data (emergency reads first)")
    a.add_argument("--fhir", action="store_true", help="print a FHIR R4 Bundle of AuditEvent resources")
    gl = ps.add_parser("grants", help="list your grants and break-glass setting")
    gl.add_argument("--fhir", action="store_true", help="print a FHIR R4 Bundle of Consent resources")
    bg = ps.add_parser("break-glass", help="allow (on) or forbid (off) emergency reads of your data, or "
                                           "release data keys to the staff who made one (release)")
    bg.add_argument("setting", choices=["on", "off", "release"])
    bg.add_argument("--yes", action="store_true", help="release without asking (release shows what it will "
                                                      "release and asks for confirmation)")
    for sp in (g, r, u, a, gl, bg):
        common(sp)

    s = add("staff", staff_cmd, "The staff client: register a profile, read permitted data.")
    ss = s.add_subparsers(dest="action", required=True)
    reg = ss.add_parser("register", help="publish your profile (signing key, X25519 key, name, role, org)")
    reg.add_argument("--name", required=True)
    reg.add_argument("--role", default="physician")
    reg.add_argument("--org", default="")
    reg.add_argument("--credential", help="a clinician credential (JSON, from `medchain issuer credential`): "
                                          "needed to make emergency (break-glass) reads")
    rd = ss.add_parser("read", help="read (and decrypt) a patient's data of one type; the read is on chain")
    rd.add_argument("patient", help="patient address (hex)")
    rd.add_argument("--type", required=True, choices=list(DATA_TYPES))
    rd.add_argument("--cid", help="one blob (default: every blob of the type)")
    rd.add_argument("--break-glass", metavar="REASON", choices=list(BREAK_GLASS_REASONS),
                    help="emergency read without a grant, with an HL7 v3-ActReason code (ETREAT); "
                         "committed, flagged in the patient's audit log, rate-limited")
    rd.add_argument("--fhir", action="store_true", help="print a FHIR R4 Bundle of Observation resources")
    for sp in (reg, rd):
        common(sp)

    i = add("issuer", issuer_cmd, "An organisation listed in the genesis: issue clinician credentials.")
    iss = i.add_subparsers(dest="action", required=True)
    cr = iss.add_parser("credential", help="vouch that a staff address may make emergency (break-glass) reads")
    cr.add_argument("--key", required=True, help="the organisation's key file (its public key is in the genesis)")
    cr.add_argument("--staff", required=True, help="the clinician's address (hex)")
    cr.add_argument("--genesis", help="the network's genesis.json (checks that this key is an issuer there)")
    cr.add_argument("--chain-id", help="the network's chain id (without --genesis)")
    cr.add_argument("--days", type=float, default=365.0, help="how long the credential lasts")
    cr.add_argument("--out", help="write the credential (JSON) here")
    cr.add_argument("--json", action="store_true", help="machine-readable output")
