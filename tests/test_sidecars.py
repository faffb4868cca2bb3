"""Data writes carry their ciphertext as a sidecar (node/sidecar.py): real validator processes,
real LMDB files, real HTTP.

What must hold: a write with its sidecar submitted to any validator commits, and every validator
holds the blob when it commits the block (no bitswap round); a sidecar that does not match its
CID or size is refused and nothing is stored; a write with neither sidecar nor held blob gets a
clear 422; a validator killed mid-load loses no blob of a committed write and repairs what it
missed; standalone uploads are signed and collected when no write names them in time.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import msgpack
import pytest

from devices.patient.client import ApiError, NodeClient
from devices.patient.phone import Phone
from node.crypto.keys import Identity
from node.ipfs.blockstore import BlockStore
from node.ipfs.cid import Cid, cid_v1_raw
from node.tx import DATA_TYPES, Profile, Tx, Write
from tests.conftest import run, running_network

HR = DATA_TYPES["heart_rate"]


def _write(ident: Identity, chain: str, nonce: int, blob: bytes, t: int, size: int | None = None,
           cid: bytes | None = None) -> Tx:
    return Tx.build(ident, chain, nonce, Write(HR, cid or cid_v1_raw(blob).to_bytes(),
                                               len(blob) if size is None else size, 0, t, t + 999))


async def _post_txs(url: str, items: list) -> list[dict]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/txs", data=msgpack.packb(items)) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["results"]


async def _post_tx(url: str, body: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/tx", data=body) as r:
        return r.status, (await r.json()).get("error", "")


def _held(home, cid: Cid) -> bool:
    store = BlockStore(home / "blobs")  # LMDB: a second process may read it
    try:
        return store.has_blob(cid) and store.get_blob(cid) is not None
    finally:
        store.close()


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_sidecar_to_a_backup_is_held_everywhere_at_commit(tmp_path):
    with running_network(tmp_path, 4) as nodes:
        async def go():
            # every validator's streams to every other open first: a batch forwarded while its
            # stream is still being dialled can arrive after its block (then the block waits for it)
            deadline = time.monotonic() + 30
            for n in nodes:
                async with NodeClient(n.url) as cn:
                    while (await cn.status())["streams_out"] < len(nodes) - 1 and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
            async with NodeClient(nodes[2].url) as c:  # a backup: the primary of view 0 is 0
                g = await c.genesis()
                chain = g["chain_id"]
                pat = Identity.from_seed(os.urandom(8))
                t = int(time.time() * 1000)
                blobs = [os.urandom(200 + k) for k in range(20)]
                txs = [_write(pat, chain, k + 1, b, t + 1000 * k) for k, b in enumerate(blobs)]
                # one POST /v1/tx with its sidecar, then a batch through POST /v1/txs
                await c.submit(txs[0].raw, blobs[0])
                res = await c.submit_many([(tx.raw, b) for tx, b in zip(txs[1:], blobs[1:], strict=True)])
                assert all(r["status"] == 202 for r in res), res
                for n in nodes:
                    async with NodeClient(n.url) as cn:
                        for tx in txs:
                            st = await cn.wait_committed(tx.id.hex(), 30)
                            assert st["status"] == "committed" and st["code"] == 0, st
                            # the validator said committed: it stored the sidecar in that commit
                            assert st["blob"]["held_here"], (n.url, st)
                        status = await cn.status()
                        # no bitswap round at all
                        assert status["replication"]["fetched"] == 0, (nodes.index(n), status["replication"],
                                                                       status["p2p_messages_in"], n.log_tail(3000))
                        assert status["replication"]["read_fetches"] == 0
                        assert status["replication"]["vote_fetches"] == 0, status["availability"]
                        # a status poll right after commit asks no peer (three streams per block):
                        # the peers announce what they hold unasked, and that makes it available
                        assert status["replication"]["asked"] == 0, status["replication"]
                        end = time.monotonic() + 20
                        while not (st := await cn.tx(txs[-1].id.hex()))["available"]:
                            assert time.monotonic() < end, st
                            await asyncio.sleep(0.2)
                        assert st["blob"]["holders"] >= 3 and (await cn.status())["replication"]["asked"] == 0
                    assert await _metric(n.url, "medchain_sidecars_stored_total") == len(txs)
                    # the forwarded copies went with the commit: the cache holds writes in flight only
                    assert await _metric(n.url, "medchain_sidecar_cache_bytes") == 0
                # the patient reads a window back from another validator: the bytes are the sidecar's
                async with NodeClient(nodes[3].url) as c3:
                    cid = cid_v1_raw(blobs[5])
                    assert await c3.download(pat, chain, str(cid), cid.to_bytes()) == blobs[5]
            for n in nodes:
                assert all(_held(n.home, cid_v1_raw(b)) for b in blobs)
        run(go())


def test_bad_sidecars_are_refused_and_nothing_is_stored(node, genesis):
    chain = genesis.chain_id

    async def go():
        async with NodeClient(node.url) as c:
            pat = Identity.from_seed(b"sidecar attacker")
            t = int(time.time() * 1000)
            blob = os.urandom(300)
            before = await c.status()
            good = _write(pat, chain, 1, blob, t)
            cases = [
                # the sidecar's bytes do not hash to the CID the write names
                ([good.raw, blob[:-1] + bytes([blob[-1] ^ 1])], 400, "does not hash"),
                # the write's size is not the sidecar's length
                ([_write(pat, chain, 1, blob, t, size=301).raw, blob], 400, "the write says 301"),
                # a sidecar beside a transaction that is not a write
                ([Tx.build(pat, chain, 1, Profile("p", "r", "o", bytes(32))).raw, blob], 400, "only with a data write"),
                # a dag-pb CID cannot ride as a sidecar
                ([_write(pat, chain, 1, blob, t, cid=Cid(1, 0x70, cid_v1_raw(blob).multihash).to_bytes()).raw, blob],
                 400, "must be raw"),
            ]
            for item, status, reason in cases:
                got = await _post_tx(node.url, msgpack.packb(item))
                assert got[0] == status and reason in got[1], (reason, got)
                res = await _post_txs(node.url, [item])
                assert res[0]["status"] == status and reason in res[0]["error"], (reason, res)
            # malformed items in a batch: a clear 400 for the whole request
            async with aiohttp.ClientSession() as s:
                for body in (msgpack.packb([[good.raw]]), msgpack.packb([[good.raw, blob, b"x"]]),
                             msgpack.packb([{"tx": good.raw}]), msgpack.packb([7])):
                    async with s.post(node.url + "/v1/txs", data=body) as r:
                        assert r.status == 400 and "invalid batch" in (await r.json())["error"]
                # a batch of 2 MiB of one-byte values (an item of empty arrays): refused by its
                # value budget before it is built (it cost 1 s and 120 MB, unauthenticated)
                bomb = b"\x91\xdd" + (2_000_000).to_bytes(4, "big") + b"\x90" * 2_000_000
                async with s.post(node.url + "/v1/txs", data=bomb) as r:
                    assert r.status == 400 and "values" in (await r.json())["error"]
            # no sidecar and no held blob: 422 that says what to do
            got = await _post_tx(node.url, good.raw)
            assert got[0] == 422 and "sidecar" in got[1], got
            after = await c.status()
            assert after["blobs"] == before["blobs"] and after["mempool_size"] == 0
            assert after["height"] == before["height"]
            assert not _held(node.home, cid_v1_raw(blob))
            # and the good one still goes through
            txid = await c.submit(good.raw, blob)
            assert (await c.wait_committed(txid, 20))["code"] == 0
            assert _held(node.home, cid_v1_raw(blob))
    run(go())


def test_standalone_uploads_are_signed_charged_and_collected(tmp_path):
    with running_network(tmp_path, 1, upload_grace_s=2.0, sender_rate=5, sender_burst=5) as (nd,):
        async def go():
            async with NodeClient(nd.url) as c:
                chain = (await c.genesis())["chain_id"]
                pat = Identity.from_seed(os.urandom(8))
                phone = Phone(pat, c, chain)
                # unsigned: 401; signed by a key that has never committed a transaction: 403
                async with c.session.post(nd.url + "/v1/blobs", data=b"x" * 100) as r:
                    assert r.status == 401
                with pytest.raises(ApiError) as ei:
                    await c.upload(b"x" * 100, pat, chain)
                assert ei.value.status == 403
                await phone.send(Profile("p", "r", "o", bytes(32)))  # the account exists now
                big = os.urandom(1024 * 1024 + 10)  # too large for a sidecar: a two-leaf DAG
                kept = Cid.parse(await c.upload(big, pat, chain))
                loose = Cid.parse(await c.upload(os.urandom(5000), pat, chain))
                assert kept.codec == 0x70 and _held(nd.home, kept) and _held(nd.home, loose)
                # a write naming the big upload (no sidecar: the validator holds it) commits and pins it
                now = int(time.time() * 1000)
                await phone.send(Write(HR, kept.to_bytes(), len(big), 0, now, now + 1))
                # the rate: uploads cost the sender's tokens, so a burst of them is throttled
                codes = []
                for _ in range(8):
                    try:
                        await c.upload(os.urandom(64), pat, chain)
                        codes.append(201)
                    except ApiError as exc:
                        codes.append(exc.status)
                        assert exc.retry_after and exc.retry_after >= 1
                assert 429 in codes, codes
                # after the grace the unreferenced upload is gone, the committed one stays
                deadline = time.monotonic() + 30
                while _held(nd.home, loose) and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                assert not _held(nd.home, loose)
                assert _held(nd.home, kept)
                assert await _metric(nd.url, "medchain_uploads_collected_total") >= 1
                assert (await c.download(pat, chain, str(kept), kept.to_bytes())) == big
        run(go())


def test_killed_validator_loses_no_committed_blob_and_repairs(tmp_path):
    with running_network(tmp_path, 4, clean_logs=False) as nodes:
        async def go():
            async with NodeClient(nodes[1].url) as c:
                chain = (await c.genesis())["chain_id"]
            pats = [Identity.from_seed(os.urandom(8)) for _ in range(6)]
            nonce = dict.fromkeys(range(len(pats)), 1)
            t = int(time.time() * 1000)
            committed: list[tuple[str, bytes]] = []
            sent: list[tuple[str, bytes]] = []

            async def burst(urls: list[str], rounds: int) -> None:
                for r in range(rounds):
                    for k, pat in enumerate(pats):
                        blob = os.urandom(150 + r)
                        tx = _write(pat, chain, nonce[k], blob, t + 1000 * (nonce[k] + 100 * k))
                        async with NodeClient(urls[k % len(urls)]) as c:
                            try:
                                await c.submit(tx.raw, blob)
                            except ApiError:
                                continue  # refused while a validator was down: not acknowledged
                        nonce[k] += 1
                        sent.append((tx.id.hex(), blob))
                    await asyncio.sleep(0.05)

            await burst([n.url for n in nodes], 5)
            nodes[3].kill()  # SIGKILL, mid-load: blocks may be half-way through its commit
            await burst([n.url for n in nodes[:3]], 10)
            nodes[3].start()
            await burst([n.url for n in nodes], 5)
            async with NodeClient(nodes[0].url) as c0:
                for txid, blob in sent:
                    st = await c0.wait_committed(txid, 60)
                    if st["status"] == "committed" and st["code"] == 0:
                        committed.append((txid, blob))
            assert len(committed) == len(sent)
            # every validator, the killed one included, ends up holding every committed blob
            deadline = time.monotonic() + 60
            missing: list = []
            while time.monotonic() < deadline:
                missing = [(n.url, txid) for n in nodes for txid, blob in committed
                           if not _held(n.home, cid_v1_raw(blob))]
                if not missing:
                    break
                await asyncio.sleep(1)
            if missing:
                bad = next(n for n in nodes if n.url == missing[0][0])
                async with NodeClient(bad.url) as cb:
                    st = await cb.status()
                    tx = await cb.tx(missing[0][1])
                raise AssertionError(f"{len(missing)} missing, first on validator {nodes.index(bad)}: {missing[:3]}\n"
                                     f"{st['replication']}\n{tx}\n{bad.log_tail(4000)}")
            async with NodeClient(nodes[3].url) as c3:
                for txid, _blob in committed[-3:]:
                    st = await c3.wait_committed(txid, 60)
                    assert st["status"] == "committed" and st["blob"]["held_here"]
        run(go())


def test_a_lying_validator_cannot_forward_forged_transactions_or_sidecars(tmp_path):
    """Validator 3's process is replaced by a host holding its real libp2p identity that forwards
    (as validators do, [16, [item, ...]]) a transaction with a forged signature, a write whose
    sidecar is not its blob, and a write with no blob at all; the honest three admit none of the
    forged ones, store none of the bad bytes, and keep committing."""
    from devices.net.localnet import make_network, start_all
    from node.consensus.messages import MAX_MESSAGE_BYTES
    from node.genesis import Genesis, Params
    from node.p2p import P2PNode
    from node.sidecar import forward_messages

    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5))
    honest, liar = nodes[:3], nodes[3]
    start_all(honest)
    try:
        genesis = Genesis.load(honest[0].home / "genesis.json")
        me = genesis.validators[3].p2p
        secret = Identity.load(liar.home / "node_key.json").p2p_secret
        chain = genesis.chain_id
        pat = Identity.from_seed(b"victim patient")
        t = int(time.time() * 1000)
        blob, other = os.urandom(300), os.urandom(300)
        forged = Tx.build(pat, chain, 1, Profile("forged", "r", "o", bytes(32)))
        forged = Tx.decode(msgpack.packb([forged.payload, bytes(64)]), check_sig=False)  # signature zeroed
        mismatched = _write(pat, chain, 1, blob, t)
        no_blob = _write(Identity.from_seed(b"other patient"), chain, 1, other, t)
        items = [(forged.raw, None), (mismatched.raw, other), (no_blob.raw, None)]

        async def go() -> list[dict]:
            host = P2PNode(secret, me.split("/")[2], int(me.split("/")[4]), [v.p2p for v in genesis.validators],
                           lambda p, d: None, max_frame=MAX_MESSAGE_BYTES + 4096, network=genesis.network)
            await host.start()
            try:
                for _ in range(25):  # ~5 s: past connection set-up and a re-forward
                    for msg in forward_messages(items):
                        host.broadcast(msg)
                    await asyncio.sleep(0.2)
                assert host.connected_peers(), "the lying validator never connected"
                # the honest network is live: a real write with its sidecar commits on all three
                async with NodeClient(honest[1].url) as c:
                    good_blob = os.urandom(200)
                    good = _write(Identity.from_seed(os.urandom(8)), chain, 1, good_blob, t)
                    await c.submit(good.raw, good_blob)
                    assert (await c.wait_committed(good.id.hex(), 30))["code"] == 0
                out = []
                for n in honest:
                    async with NodeClient(n.url) as cn:
                        await cn.wait_committed(good.id.hex(), 30)  # then nothing honest is pending here
                        out.append({"status": await cn.status(),
                                    "txs": [await (await cn.session.get(f"{n.url}/v1/tx/{x.id.hex()}")).json()
                                            for x in (forged, mismatched, no_blob)]})
                return out
            finally:
                await host.stop()

        for res in run(go()):
            for st in res["txs"]:
                assert st["status"] in ("unknown", "rejected"), st  # never pending, never committed
            assert res["status"]["mempool_size"] == 0
        # the forged sidecar's bytes are stored nowhere
        for n in honest:
            assert not _held(n.home, cid_v1_raw(other))
    finally:
        for n in nodes:
            n.stop()
