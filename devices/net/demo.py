"""`make demo`: a local validator, emulated wearables, a phone and a clinician, the paper's flow."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

from devices import aio
from devices.net.localnet import make_network, supervised
from devices.patient import envelope
from devices.patient.client import NodeClient
from devices.patient.phone import Phone
from devices.patient.staff import AccessDenied, Staff
from devices.patient.verified_reads import VerifiedReader
from devices.wearable.wearables import make_wearable
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
        # every state read the phone and the staff client act on is proven against a certified
        # block, falling back across the genesis validators (devices/patient/verified_reads.py)
        urls = [url, *(u for v in genesis.validators if (u := f"http://{v.api}") != url)]
        phone = Phone(patient, c, chain, vals, reader=VerifiedReader(urls, chain, vals, session=c.session))
        staff = Staff(doctor, c, chain, reader=VerifiedReader(urls, chain, vals, session=c.session), validators=vals)
        wearables = {k: make_wearable(k, f"{k}-1", seed=i) for i, k in enumerate(KINDS)}
        print(f"patient {patient.address.hex()[:16]}…  staff {doctor.address.hex()[:16]}…")

        await staff.register("Dr. Ada Lovelace", "cardiologist", "St. Example Hospital")
        say("staff registered a profile (signing key, X25519 key, name, role, organisation)")
        await phone.grant(doctor.address, ["heart_rate", "blood_pressure"])
        say("patient granted {heart_rate, blood_pressure} with the data keys sealed to the staff key "
            "(its X25519 key taken from a state proof against a certified block, not on trust)")

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


async def fleet(urls: list[str], genesis: Genesis, phones: int, seconds: float) -> dict:
    """Phones with five wearables each write 1-minute windows as fast as their commits allow
    (closed loop: each phone waits for its write to commit before the next, and checks the commit
    against the genesis keys from the validator's answer), spread over validators."""
    chain = genesis.chain_id
    clients = [NodeClient(u) for u in urls]
    for c in clients:
        await c.__aenter__()
    lat: list[float] = []
    readings = 0
    deadline = time.monotonic() + seconds

    async def phone_loop(k: int) -> None:
        nonlocal readings
        ph = Phone(Identity.from_seed(b"demo-phone-%d" % k), clients[k % len(clients)], chain,
                   genesis.validator_keys)
        devs = [make_wearable(kind, f"{kind}-{k}", seed=k) for kind in KINDS]
        t = int(time.time() * 1000) - 3_600_000
        while time.monotonic() < deadline:
            for kind, dev in zip(KINDS, devs, strict=True):
                frames = list(dev.frames_between(t, t + 60_000))
                if not frames:
                    continue
                t0 = time.monotonic()
                await ph.write_window(kind, frames)
                lat.append((time.monotonic() - t0) * 1000)
                readings += len(frames)
                if time.monotonic() >= deadline:
                    return
            t += 60_000

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(phone_loop(k) for k in range(phones)))
    finally:
        for c in clients:
            await c.close()
    dt = time.monotonic() - t0
    lat.sort()
    pct = {p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan") for p in (50, 95, 99)}
    return {"writes": len(lat), "readings": readings, "seconds": dt, "tps": len(lat) / dt, "latency_ms": pct}


def main(windows: int = 4, validators: int = 4, seconds: float = 30.0, phones: int = 64) -> int:
    with tempfile.TemporaryDirectory(prefix="medchain-demo-") as tmp:
        nodes = make_network(Path(tmp), validators=validators)
        kind = "PBFT, quorum of one" if validators == 1 else f"PBFT over py-libp2p, n={validators}"
        print(f"starting {validators} validator process(es) ({kind}): " + ", ".join(n.url for n in nodes))
        genesis = Genesis.load(nodes[0].home / "genesis.json")
        entry = nodes[1 % validators].url
        with supervised(nodes):  # as `medchain devnet`: no validator outlives the demo
            print(f"\n1. the paper's flow, through validator {1 % validators} (not the primary)")
            summary = aio.run(flow(entry, genesis, windows))
            cpu0 = [n.cpu_seconds() for n in nodes]
            h0 = json.loads(urlopen(nodes[0].url + "/v1/status").read())["height"]
            print(f"\n2. {phones} phones x {len(KINDS)} wearables for {seconds:.0f} s (closed loop)")
            load = aio.run(fleet([n.url for n in nodes], genesis, phones, seconds))
            cpu = [n.cpu_seconds() - c for n, c in zip(nodes, cpu0, strict=True)]
            blocks = json.loads(urlopen(nodes[0].url + "/v1/status").read())["height"] - h0
            # the last blocks may still be landing on some validators: give them a moment to converge
            deadline = time.monotonic() + 15
            while True:
                heads = [json.loads(urlopen(n.url + "/v1/status").read()) for n in nodes]
                if len({(h["height"], h["last_block_hash"]) for h in heads}) == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        reps = [verify_ledger(n.home / "ledger", genesis) for n in nodes]
        same = len({(h["height"], h["last_block_hash"], h["state_root"]) for h in heads}) == 1
        lat = load["latency_ms"]
        print("\nsummary")
        say(f"flow: blocks {summary['height']}, {summary['writes']} windows ({summary['readings']} readings)")
        say(f"fleet: {load['writes']} encrypted windows committed ({load['readings']} readings) in {load['seconds']:.1f} s"
            f" = {load['tps']:.0f} committed writes/s")
        say(f"commit latency (submit with sidecar + commit) ms: p50 {lat[50]:.0f}  p95 {lat[95]:.0f}  p99 {lat[99]:.0f}")
        say("validator CPU s during the fleet: " + "  ".join(f"v{i} {c:.1f}" for i, c in enumerate(cpu)))
        mean = sum(cpu) / len(cpu)
        say(f"  per validator: {1000 * mean / max(1, blocks):.1f} ms of CPU per block ({blocks} blocks), "
            f"{1e6 * mean / max(1, load['writes']):.0f} us per committed write")
        say(f"validators agree: {'yes' if same else 'NO'} (height {heads[0]['height']}, "
            f"state root {heads[0]['state_root'][:16]}…)")
        say("offline verify: " + ", ".join(f"v{i} {'OK' if r.ok else 'FAILED'}" for i, r in enumerate(reps))
            + f" ({reps[0].height} blocks, {reps[0].transactions} transactions)")
        return 0 if same and all(r.ok for r in reps) else 1
