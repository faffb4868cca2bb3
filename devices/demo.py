"""`make demo`: a local validator, emulated wearables, a phone and a clinician, the paper's flow."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from devices import envelope
from devices.client import NodeClient
from devices.localnet import make_network
from devices.phone import Phone
from devices.staff import AccessDenied, Staff
from devices.wearables import make_wearable
from node.crypto import aead, seal
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.ipfs.cid import Cid
from node.tx.model import DATA_TYPES
from node.verify import verify_ledger

KINDS = ["heart_rate", "blood_pressure", "body_temperature", "glucose", "spo2"]


def say(msg: str) -> None:
    print(f"  {msg}", flush=True)


async def flow(url: str, genesis: Genesis, windows: int) -> dict:
    chain, vals = genesis.chain_id, genesis.validator_keys
    async with NodeClient(url) as c:
        patient, doctor = Identity.generate(), Identity.generate()
        phone, staff = Phone(patient, c, chain, vals), Staff(doctor, c, chain)
        wearables = {k: make_wearable(k, f"{k}-1", seed=i) for i, k in enumerate(KINDS)}
        print(f"patient {patient.address.hex()[:16]}…  staff {doctor.address.hex()[:16]}…")

        await staff.register("Dr. Ada Lovelace", "cardiologist", "St. Example Hospital")
        say("staff registered a profile (signing key, X25519 key, name, role, organisation)")
        await phone.grant(doctor.address, ["heart_rate", "blood_pressure"])
        say("patient granted {heart_rate, blood_pressure} with the data keys sealed to the staff key")

        now = int(time.time() * 1000)
        t0 = time.monotonic()
        n_tx = n_readings = 0
        for w in range(windows):
            start = now - (windows - w) * 300_000
            for k, dev in wearables.items():
                frames = list(dev.frames_between(start, start + 300_000))
                if frames:
                    await phone.write_window(k, frames)
                    n_tx += 1
                    n_readings += len(frames)
        dt = time.monotonic() - t0
        say(f"phone wrote {n_readings} readings from {len(KINDS)} wearables in {n_tx} encrypted windows "
            f"({n_tx / dt:.1f} committed writes/s, each waited for commit and proof-checked)")

        hr = await staff.read(patient.address, "heart_rate")
        say(f"staff read heart_rate: {len(hr)} windows, {sum(len(x.readings) for x in hr)} readings decrypted")
        try:
            await staff.read(patient.address, "glucose")
            say("ERROR: staff read glucose")
        except AccessDenied as exc:
            say(f"staff refused glucose: {exc}")

        await phone.grant(doctor.address, ["heart_rate", "spo2"])
        say("patient changed the grant to {heart_rate, spo2}: blood_pressure's key epoch rotated")
        sp = await staff.read(patient.address, "spo2")
        say(f"staff read spo2: {sum(len(x.readings) for x in sp)} readings")

        await phone.revoke(doctor.address)
        say("patient revoked every type (empty set): the revoked types' key epochs rotated")
        try:
            await staff.read(patient.address, "heart_rate")
            say("ERROR: staff read after revoke")
        except AccessDenied as exc:
            say(f"staff refused after revoke: {exc}")

        res = await phone.write_window("heart_rate", list(wearables["heart_rate"].frames_between(now, now + 60_000)))
        blob = await c.download(patient, chain, res.cid, Cid.parse(res.cid).to_bytes())
        old = {(k["type"], k["epoch"]): k["sealed"] for k in (await c.sealed_keys(patient.address, doctor.address))["keys"]}
        stolen_key = seal.unseal(doctor.box_secret, bytes.fromhex(old[("heart_rate", 0)]))
        rec = next(r for r in (await c.data(patient.address, type="heart_rate"))["data"] if r["cid"] == res.cid)
        ad = envelope.aad(chain, patient.address, DATA_TYPES["heart_rate"], rec["epoch"], rec["t_start_ms"],
                          rec["t_end_ms"])
        try:
            envelope.open_window(stolen_key, ad, blob)
            say("ERROR: revoked staff decrypted new data")
        except aead.AeadError:
            say(f"new heart_rate window is epoch {res.epoch}; the revoked staff's epoch-0 key cannot open it")

        reads = await phone.audit()
        say(f"patient's audit log: {len(reads)} reads on chain")
        for r in reads:
            say(f"    {r['reader'][:12]}… {r['type']:16} {'allowed' if r['allowed'] else 'denied '} at height {r['height']}")
        st = await c.status()
        return {"height": st["height"], "writes": n_tx, "readings": n_readings, "write_rate": n_tx / dt}


def main(windows: int = 4) -> int:
    with tempfile.TemporaryDirectory(prefix="medchain-demo-") as tmp:
        nodes = make_network(Path(tmp), validators=1)
        print(f"starting 1 validator (PBFT, quorum of one) at {nodes[0].url}")
        for n in nodes:
            n.start()
        genesis = Genesis.load(nodes[0].home / "genesis.json")
        try:
            summary = asyncio.run(flow(nodes[0].url, genesis, windows))
        finally:
            cpu = nodes[0].cpu_seconds()
            for n in nodes:
                n.stop()
        rep = verify_ledger(nodes[0].home / "ledger", genesis)
        print("\nsummary")
        say(f"blocks committed        {summary['height']}")
        say(f"data windows written    {summary['writes']} ({summary['readings']} readings)")
        say(f"validator CPU           {cpu:.2f} s")
        say(f"offline verify          {'OK' if rep.ok else 'FAILED: ' + '; '.join(rep.errors)}"
            f" ({rep.height} blocks, {rep.transactions} transactions)")
        return 0 if rep.ok else 1
