"""A real 4-process devnet on loopback (PBFT over py-libp2p), driven through the HTTP API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from devices.net.faultharness import acknowledged_load, assert_committed, converged
from devices.net.localnet import make_network, start_all
from devices.patient.client import NodeClient
from node.crypto.keys import Identity
from node.genesis import Params
from node.tx import Profile, Tx
from tests.conftest import run


@pytest.fixture(params=["direct"])
def devnet(tmp_path, request):
    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5), p2p_mode=request.param)
    start_all(nodes)
    yield nodes
    for n in nodes:
        n.stop()


async def _heads(nodes) -> list[dict]:
    out = []
    for n in nodes:
        async with NodeClient(n.url) as c:
            out.append(await c.status())
    return out


def test_devnet_commits_consistently(devnet):
    nodes = devnet
    senders = [Identity.from_seed(b"dev%d" % i) for i in range(100)]
    per_sender = 30

    async def go():
        clients = [NodeClient(n.url) for n in nodes]
        for c in clients:
            await c.__aenter__()
        try:
            chain = (await clients[0].status())["chain_id"]
            ids = []
            # each sender talks to one validator (most of them not the primary), in batches
            for k in range(per_sender):
                for v in range(4):
                    txs = [Tx.build(s, chain, k + 1, Profile(f"n{k}", "r", "o", bytes(32)))
                           for s in senders[v::4]]
                    res = await clients[v].submit_many([t.raw for t in txs])
                    assert all(r["status"] == 202 for r in res), res[:3]
                    ids += [t.id.hex() for t in txs]
            for tid in ids:
                st = await clients[3].wait_committed(tid, 60)
                assert st["status"] == "committed" and st["code"] == 0, st
            # every validator reaches the same height, block hashes and state root
            heads = await converged(nodes, timeout=10.0, same_view=False)
            height = heads[0]["height"]
            for hgt in range(1, height + 1):
                hashes = {(await c.get_json(f"/v1/blocks/{hgt}"))["hash"] for c in clients}
                assert len(hashes) == 1, hgt
            # exactly once: the ids across all blocks are unique and are exactly what we sent
            seen = []
            for hgt in range(1, height + 1):
                seen += (await clients[1].get_json(f"/v1/blocks/{hgt}"))["tx_ids"]
            assert len(seen) == len(set(seen)) == len(ids) and set(seen) == set(ids)
            return heads
        finally:
            for c in clients:
                await c.close()

    heads = run(go())
    assert heads[0]["validators"] == 4 and {h["primary"] for h in heads} == {0}
    for n in nodes:
        n.stop()
    for n in nodes:  # and each ledger verifies offline, certificates included
        p = subprocess.run([sys.executable, "-m", "node.cli", "verify", "--home", str(n.home), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert json.loads(p.stdout)["ok"], p.stdout


def test_lagging_replica_catches_up(devnet):
    """A replica stopped while the others commit rejoins from certified blocks."""
    nodes = devnet
    nodes[3].stop()

    async def load(c, chain, start):
        ids = []
        for i in range(20):
            t = Tx.build(Identity.from_seed(b"lag%d" % i), chain, start, Profile("x", "r", "o", bytes(32)))
            ids.append(await c.submit(t.raw))
        for tid in ids:
            assert (await c.wait_committed(tid, 30))["status"] == "committed"

    async def go():
        async with NodeClient(nodes[1].url) as c:
            chain = (await c.status())["chain_id"]
            await load(c, chain, 1)
            await load(c, chain, 2)
            return (await c.status())["height"]
    h = run(go())
    nodes[3].start()

    async def wait():
        for _ in range(200):
            heads = await _heads(nodes)
            if heads[3]["height"] >= h:
                return heads
            await asyncio.sleep(0.1)
        return heads
    heads = run(wait())
    assert heads[3]["height"] >= h, heads

    async def block_hash(node, height):
        async with NodeClient(node.url) as c:
            return (await c.get_json(f"/v1/blocks/{height}"))["hash"]
    assert run(block_hash(nodes[3], h)) == run(block_hash(nodes[0], h))


def test_light_client_proof(devnet):
    """A phone checks a commit from the Merkle path and the certificate alone; forgeries fail."""
    from node.block import Block
    from node.genesis import Genesis
    from node.proof import ProofError, verify_block_json, verify_inclusion, verify_status
    from node.wire import encode

    gen = Genesis.load(devnet[0].home / "genesis.json")

    async def go():
        async with NodeClient(devnet[2].url) as c:
            txs = [Tx.build(Identity.from_seed(b"lc%d" % i), gen.chain_id, 1, Profile("p", "r", "o", bytes(32)))
                   for i in range(7)]
            await c.submit_many([t.raw for t in txs])
            st = await c.wait_committed(txs[5].id.hex(), 30)
            other = await c.wait_committed(txs[4].id.hex(), 30)
            return txs[5].id, st, await c.block_raw(st["height"]), other, await c.get_json(f"/v1/blocks/{st['height']}")
    txid, st, raw, other, blk = run(go())
    path = [bytes.fromhex(p) for p in st["proof"]]
    keys = gen.validator_keys
    block = verify_inclusion(txid, st["index"], st["tx_count"], path, raw, keys, gen.chain_id)
    assert len(block.cert) >= 3
    with pytest.raises(ProofError, match="not at that index"):
        verify_inclusion(txid, (st["index"] + 1) % st["tx_count"], st["tx_count"], path, raw, keys, gen.chain_id)
    if path:
        with pytest.raises(ProofError, match="Merkle"):
            verify_inclusion(txid, st["index"], st["tx_count"], [bytes(32)] + path[1:], raw, keys, gen.chain_id)
    # a certificate with one signature dropped (below 2f+1), or a signature from another key
    short = encode([block.header.encode(), list(block.txs), [list(x) for x in block.cert[:2]], block.cert_view])
    with pytest.raises(ProofError, match="certificate"):
        verify_inclusion(txid, st["index"], st["tx_count"], path, short, keys, gen.chain_id)
    signer = Block.decode(raw).cert[0][0]
    forged_keys = list(keys)
    forged_keys[signer] = Identity.from_seed(b"not a validator").public_key
    with pytest.raises(ProofError, match="certificate"):
        verify_inclusion(txid, st["index"], st["tx_count"], path, raw, forged_keys, gen.chain_id)
    with pytest.raises(ProofError, match="another chain"):
        verify_inclusion(txid, st["index"], st["tx_count"], path, raw, keys, "other-chain")

    # the same from the answer alone: it carries the certified header (no block download)
    header = verify_status(txid, st, keys, gen.chain_id)
    assert header == block.header and header.height == st["height"]
    lies = {
        "no certified header": {k: v for k, v in st.items() if k != "header"},
        "certificate": {**st, "certificate": st["certificate"][:2]},  # below 2f+1
        "Merkle": {**st, "proof": [bytes(32).hex()] + st["proof"][1:]} if path else {**st, "index": 1 - st["index"]},
        "height or block hash": {**st, "height": st["height"] + 1},
        "integers": {**st, "cert_view": str(st["cert_view"])},
        "is not the answer's": {**st, "code": 1},  # a result the proven receipt contradicts
        "no proven receipt": {k: v for k, v in st.items() if k != "receipt"},
        "does not lead to the certified state root": {**st, "receipt": other["receipt"]},  # another's receipt
    }
    for reason, lie in lies.items():
        with pytest.raises(ProofError, match=reason):
            verify_status(txid, lie, keys, gen.chain_id)
    other = Tx.build(Identity.from_seed(b"not in it"), gen.chain_id, 1, Profile("p", "r", "o", bytes(32)))
    with pytest.raises(ProofError, match="Merkle"):  # another transaction's inclusion: no path leads there
        verify_status(other.id, st, keys, gen.chain_id)
    with pytest.raises(ProofError, match="certificate"):
        verify_status(txid, st, forged_keys, gen.chain_id)
    with pytest.raises(ProofError, match="header of chain"):
        verify_status(txid, st, keys, "other-chain")
    # a follower's check of the block's JSON: certified header, and exactly the ids under its tx_root
    assert verify_block_json(blk, keys, gen.chain_id) == block.header
    ids = blk["tx_ids"]
    block_lies = {
        "not the ones under": {**blk, "tx_ids": ids[:-1]},  # a transaction hidden
        "not the ones under its": {**blk, "tx_ids": [*ids, txid.hex()]},  # or one added
        "certificate": {**blk, "certificate": blk["certificate"][:2]},
        "height": {**blk, "height": blk["height"] + 1},
        "no certified header": {k: v for k, v in blk.items() if k != "header"},
    }
    for reason, lie in block_lies.items():
        with pytest.raises(ProofError, match=reason):
            verify_block_json(lie, keys, gen.chain_id)


async def _load_until(nodes, stop_evt, committed, tag):
    """Closed-loop senders over the backups' APIs, counting acknowledged commits (devices/net/faultharness.py)."""
    await acknowledged_load(nodes, stop_evt, committed, tag)


@pytest.mark.parametrize("victim", [0, 2])
def test_sigkill_and_restart_under_load(devnet, victim):
    """SIGKILL the primary (0) or a backup (2) mid-load and restart it: it recovers what it signed
    from its consensus log, the network commits again, and every acknowledged commit is kept."""
    nodes = devnet
    committed: list[str] = []

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(_load_until(nodes, stop, committed, b"kill%d-" % victim))
        await asyncio.sleep(2.0)
        before = len(committed)
        nodes[victim].kill()
        await asyncio.sleep(1.0)
        nodes[victim].start()
        restarted = len(committed)
        # transactions forwarded while it was down are re-sent after REFORWARD_S: allow for that
        for _ in range(300):
            if len(committed) > restarted + 20:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        return before, restarted
    before, restarted = run(go())
    assert before > 10
    assert len(committed) > restarted + 20, "commits did not resume after the restart"

    async def check():
        await converged(nodes, timeout=10.0, same_view=False)
        await assert_committed([nodes[victim]], committed)
    run(check())


def test_corrupt_consensus_log_stops_loudly(devnet):
    import lmdb
    nodes = devnet
    nodes[2].stop()
    env = lmdb.open(str(nodes[2].home / "ledger"), max_dbs=8, map_size=1 << 36)
    db = env.open_db(b"consensus")
    with env.begin(write=True, db=db) as txn:
        txn.put((10**6).to_bytes(8, "big"), b"\xc1 torn")
    env.close()
    with pytest.raises(RuntimeError, match="exited"):
        nodes[2].start(timeout=20)
    assert "consensus log entry 1000000 is corrupt" in nodes[2].log_tail(5000)
