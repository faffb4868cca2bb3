"""A full disk on real processes (node/storage.py): validator 3's home is a size-limited tmpfs that
fills under load. It refuses new work with 507 and Retry-After and logs what is full and where; it
stops voting and delivering; the other three keep committing; once the test frees space it resumes
without a restart, catches up to the same head, serves again, and `medchain verify` passes on every
home. Needs root (mount); skipped with the reason otherwise."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import make_network, start_all
from devices.patient.client import ApiError, NodeClient
from node.crypto.keys import Identity
from node.genesis import Params
from node.ipfs.cid import cid_v1_raw
from node.tx import Profile, Tx
from tests.test_sidecars import _held, _write
from tests.test_storage import _mount_tmpfs, _umount, ballast

FULL = 3  # the validator whose disk fills


async def _status(node) -> dict:
    async with NodeClient(node.url) as c:
        return await c.status()


async def _write_load(nodes, stop: asyncio.Event, blobs: list, senders: int = 6) -> None:
    """Data writes carrying 8 KiB ciphertexts as sidecars, spread over every validator, each sender
    waiting for its commit; `blobs` collects the CIDs of the acknowledged ones."""
    clients = [NodeClient(n.url) for n in nodes]
    chain = (await clients[0].status())["chain_id"]

    async def sender(i: int) -> None:
        ident, n, k = Identity.from_seed(b"disk-writer-%d" % i), 1, i
        while not stop.is_set():
            blob = os.urandom(8192)
            tx = _write(ident, chain, n, blob, int(time.time() * 1000))
            c = clients[k % len(clients)]
            try:
                await c.submit(tx.raw, blob)
                st = await c.wait_committed(tx.id.hex(), 5)
            except Exception:  # noqa: BLE001 - a 507 from the full validator, or a timeout: the next one, same nonce
                k += 1
                await asyncio.sleep(0.1)
                continue
            if st["status"] == "committed":
                blobs.append(cid_v1_raw(blob))
                n += 1
            else:
                k += 1
    try:
        await asyncio.gather(*(sender(i) for i in range(senders)))
    finally:
        for c in clients:
            await c.close()


async def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def test_a_validator_whose_disk_fills_refuses_work_stops_voting_and_catches_up_once_space_is_freed(tmp_path):
    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5))
    full = nodes[FULL]
    # its home moves onto a 24 MiB tmpfs; its log stays off it (a full disk must not eat the log line)
    saved = tmp_path / "home-copy"
    full.home.rename(saved)
    _mount_tmpfs(full.home, 24)
    try:
        subprocess.run(["cp", "-a", f"{saved}/.", str(full.home)], check=True)
        full.log_path = tmp_path / "node3.log"
        full.env["MEDCHAIN_DISK_RESERVE_MB"] = "1"
        weight = ballast(full.home, 5 << 20)
        start_all(nodes)
        blobs: list = []
        try:
            asyncio.run(_scenario(nodes, weight, blobs))
        finally:
            for n in nodes:
                n.stop()
        # every acknowledged write's ciphertext is on the validator whose disk filled (repaired over
        # bitswap for the blocks it took by state transfer)
        assert len(blobs) > 20
        missing = [c for c in blobs if not _held(full.home, c)]
        assert not missing, f"{len(missing)} of {len(blobs)} blobs missing on validator {FULL}"
        for n in nodes:
            assert "Traceback" not in n.log_tail(500_000), n.log_tail()
            out = subprocess.run([sys.executable, "-m", "node.cli", "verify", "--home", str(n.home)],
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        _umount(full.home)


async def _scenario(nodes, weight, blobs: list) -> None:
    full = nodes[FULL]
    committed: list[str] = []
    stop = asyncio.Event()
    load = asyncio.gather(acknowledged_load(nodes, stop, committed, b"disk-", senders=32, avoid=None),
                          _write_load(nodes, stop, blobs))
    try:
        async def stalled() -> bool:
            return (await _status(full))["storage"]["stalled"] is not None
        await _wait(stalled, 180, "validator 3's disk to fill")
        st = await _status(full)
        assert str(full.home) in st["storage"]["stalled"], st["storage"]
        log = full.log_path.read_text()
        assert "STORAGE FULL" in log and str(full.home) in log and "filesystem" in log, log[-3000:]

        # new work is refused, clearly, with Retry-After
        chain = st["chain_id"]
        ident = Identity.from_seed(b"disk-refused")
        async with NodeClient(full.url) as c:
            try:
                await c.submit(Tx.build(ident, chain, 1, Profile("x", "r", "o", bytes(32))).raw)
                raise AssertionError("a transaction was admitted by a validator whose disk is full")
            except ApiError as exc:
                assert exc.status == 507 and exc.retry_after and "insufficient storage" in exc.reason, exc
            try:
                await c.upload(os.urandom(1000), ident, chain)
                raise AssertionError("an upload was stored by a validator whose disk is full")
            except ApiError as exc:
                assert exc.status == 507 and exc.retry_after, exc

        # it delivers nothing more while the other three keep committing
        h_full = st["height"]
        h0 = (await _status(nodes[0]))["height"]

        async def others_moved() -> bool:
            return min([(await _status(n))["height"] for n in nodes[:FULL]]) >= h0 + 10
        await _wait(others_moved, 60, "the other validators to keep committing")
        assert (await _status(full))["height"] == h_full

        weight.unlink()  # the operator frees space; no restart

        async def resumed() -> bool:
            s = (await _status(full))["storage"]
            return s["stalled"] is None and s["low"] is None and s["resumed"] >= 1
        await _wait(resumed, 60, "validator 3 to resume")
        await asyncio.sleep(2.0)  # under load for a while after resuming
    finally:
        stop.set()
        await load
    heads = await converged(nodes, timeout=90)
    assert heads[FULL]["height"] > h_full
    await assert_committed(nodes, committed)
    async with NodeClient(full.url) as c:  # and it serves again
        txid = await c.submit(Tx.build(ident, chain, 1, Profile("x", "r", "o", bytes(32))).raw)
        assert (await c.wait_committed(txid, 30))["status"] == "committed"
