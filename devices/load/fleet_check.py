"""The fleet's closing check: no reading lost between the wearables and a permitted staff member.

Counts every committed write against its patient's on-chain records (proven against a certified
state with the genesis; else GET /v1/patients/{p}/data), for every patient, then for a sample of patients: the patient grants a fresh staff member every type
(devices/patient/phone.py), the staff member commits a read per type, unseals the keys from the chain,
fetches and decrypts every window (devices/patient/staff.py), and each window's plaintext is compared with
the SHA-256 of what the phone sealed. `run_fleet` runs a fleet and, when asked, this check.
"""

from __future__ import annotations

import asyncio
import hashlib

from devices.load.fleet import ALL_TYPES, KINDS, Fleet, FleetConfig, FleetPhone
from devices.patient.phone import Phone
from devices.patient.staff import Staff
from devices.patient.verified_reads import VerifiedReader
from node.genesis import Genesis
from node.ipfs.cid import Cid
from node.wire import encode


async def check_fleet(fleet: Fleet, sample: int = 10) -> dict:
    """Count every committed write against its patient's on-chain records, then have a permitted
    staff member decrypt every window of a sample of patients and compare with what was emitted."""
    sem = asyncio.Semaphore(32)
    on_chain: set[bytes] = set()  # binary CIDs, as the fleet keeps them
    vals = None if fleet.genesis is None else fleet.genesis.validator_keys
    urls = [cl.base for cl in fleet.clients]
    # with the genesis, each patient's records are proven against a certified state: one validator
    # whose own state lost writes must not make the run look whole by listing them anyway
    lists = None if vals is None else VerifiedReader(urls, fleet.chain, vals, session=fleet.clients[0].session)

    async def records(ph: FleetPhone) -> None:
        async with sem:
            listing = await (fleet.clients[ph.v].data(ph.addr) if lists is None else lists.data(ph.addr))
            for r in listing["data"]:
                on_chain.add(Cid.parse(r["cid"]).to_bytes())
    await asyncio.gather(*(records(p) for p in fleet.phones))
    missing = [c for c in fleet.written if c not in on_chain]
    counted = sum(m.n for c, m in fleet.written.items() if c in on_chain)
    verifier = fleet.staff[-1]
    picks = fleet.rng.sample(range(len(fleet.phones)), min(sample, len(fleet.phones)))
    windows = readings = mismatched = 0
    for k in picks:
        ph = fleet.phones[k]
        c = fleet.clients[ph.v]
        # with the genesis, the grant seals keys to the staff member's key as proven on the chain,
        # and the staff member reads the index and keys by proof: not one validator's word
        reader = None if vals is None else VerifiedReader(urls, fleet.chain, vals, session=c.session)
        await Phone(ph.ident, c, fleet.chain, vals, reader=reader).grant(verifier.address, list(KINDS))
        st = Staff(verifier, c, fleet.chain, reader=reader, validators=vals)
        for d in ALL_TYPES:
            if not any(m.owner == k and m.dtype == d for m in fleet.written.values()):
                continue
            for w in await st.read(ph.addr, d):
                m = fleet.written.get(Cid.parse(w.cid).to_bytes())
                pt = encode([1, [list(r) for r in w.readings]])
                ok = m is not None and m.owner == k and hashlib.sha256(pt).digest() == m.digest
                windows += 1
                readings += len(w.readings)
                mismatched += 0 if ok else 1
    want = sum(m.n for m in fleet.written.values() if m.owner in set(picks))
    return {"writes_committed": len(fleet.written), "writes_missing_on_chain": len(missing),
            "readings_emitted": fleet.emitted, "readings_in_committed_blobs": counted,
            "readings_unsent_open_loop": fleet.unsent, "readings_lost": fleet.emitted - counted - fleet.unsent,
            "sampled_patients": len(picks),
            "sampled_windows_decrypted": windows, "sampled_readings_decrypted": readings,
            "sampled_readings_expected": want, "sampled_windows_mismatched": mismatched}


async def run_fleet(urls: list[str], cfg: FleetConfig, progress=None, check_sample: int = 0,
                    mark=None, genesis: Genesis | None = None) -> dict:
    """Run the fleet against validators at `urls`; with check_sample, also the no-lost-readings check.
    With the genesis, a commit counts only in a block whose certificate checks against its keys."""
    f = Fleet(urls, cfg, progress, mark, genesis)
    try:
        res = await f.run()
        if check_sample:
            res["check"] = await check_fleet(f, check_sample)
        return res
    finally:
        await f.close()
