"""The validator network is closed: a libp2p host that is not in the genesis validator set cannot
connect to a validator's libp2p port, so it can neither inject transactions or consensus messages
nor receive anything. Real validator processes; the outsider uses node.p2p's public API. Also the
operator metrics (Prometheus names by convention) of a running 4-validator network."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devices.net.localnet import free_ports, make_network, start_all
from devices.patient.client import NodeClient
from node.crypto.keys import Identity
from node.genesis import Genesis, Params
from node.p2p import P2PNode, peer_id_from_secret
from node.tx import Profile, Tx
from node.wire import encode
from tests.conftest import run, running_network

T_TXS = 16  # the forwarded-batch message type (node/validator.py)


@pytest.fixture
def devnet(tmp_path):
    with running_network(tmp_path, clean_logs=False) as nodes:
        yield nodes


def metrics(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_outsider_cannot_connect_or_inject(devnet):
    nodes = devnet
    genesis = Genesis.load(nodes[0].home / "genesis.json")
    validators = [v.p2p for v in genesis.validators]
    secret = Identity.from_seed(b"outsider").secret
    (port,) = free_ports(1)
    me = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_from_secret(secret)}"
    got: list[tuple[str, bytes]] = []

    async def go() -> tuple[list[str], list[dict], dict]:
        # the outsider believes it is part of the set and dials every validator
        # (and speaks the network's protocol ids: what keeps it out is the validator set and the swarm key)
        outsider = P2PNode(secret, "127.0.0.1", port, [*validators, me], lambda p, d: got.append((p, d)),
                           network=genesis.network)
        await outsider.start()
        try:
            async with NodeClient(nodes[1].url) as c:
                chain = (await c.status())["chain_id"]
                evil = Tx.build(Identity.from_seed(b"evil"), chain, 1, Profile("evil", "x", "y", bytes(32)))
                seen = []
                for _ in range(30):  # ~6 s of redials and injection attempts
                    outsider.broadcast(encode([T_TXS, [evil.raw]]))
                    for pid in [v.rsplit("/p2p/", 1)[1] for v in validators]:
                        outsider.send(pid, encode([T_TXS, [evil.raw]]))
                    seen += outsider.connected_peers()
                    await asyncio.sleep(0.2)
                # a control transaction through the API commits, so the network was live throughout
                ok = Tx.build(Identity.from_seed(b"good"), chain, 1, Profile("good", "x", "y", bytes(32)))
                await c.submit(ok.raw)
                assert (await c.wait_committed(ok.id.hex(), 30))["status"] == "committed"
                statuses = []
                for n in nodes:
                    async with NodeClient(n.url) as cn:
                        r = await cn.session.get(f"{n.url}/v1/tx/{evil.id.hex()}")  # 404 when unknown
                        statuses.append({"tx": await r.json(), "status": await cn.status(),
                                         "metrics": await (await cn.session.get(n.url + "/metrics")).text()})
                return seen, statuses, dict(outsider.stats)
        finally:
            await outsider.stop()

    seen, statuses, stats = run(go())
    assert seen == [] and got == [], "the outsider connected to a validator or received a message"
    for s in statuses:
        assert s["tx"]["status"] == "unknown", "a transaction injected over libp2p reached a validator"
        assert s["status"]["peers"] == 3  # only the genesis validators
    assert stats["msgs_recv"] == 0
    logs = "".join(n.log_tail(500_000) for n in nodes)
    assert "refused connection from non-validator peer" in logs

    # operator metrics of a live network: Prometheus names by convention
    m = metrics(statuses[1]["metrics"])
    for name in ("medchain_block_height", "medchain_view", "medchain_peers", "medchain_mempool_transactions",
                 "medchain_blobs_held", "medchain_native_crypto", "medchain_commit_latency_seconds",
                 "medchain_mempool_capacity"):
        assert name in m, name
    assert m["medchain_peers"][0].value == 3 and m["medchain_block_height"][0].value >= 1
    # counters: the family name without _total, the samples with it
    for name in ("medchain_view_changes", "medchain_tx_admitted", "medchain_tx_committed", "medchain_tx_rejected",
                 "medchain_p2p_messages", "medchain_mempool_evictions", "medchain_throttled", "medchain_http_requests",
                 "medchain_blob_integrity_failures"):
        assert name in m and all(s.name.endswith(("_total", "_created")) for s in m[name]), name
    assert {s.labels["direction"] for s in m["medchain_p2p_messages"] if s.name.endswith("_total")} == {"in", "out"}
    assert [s.value for s in m["medchain_native_crypto"]] in ([0.0], [1.0])
    json.dumps(statuses[0]["status"])


def test_rejections_by_reason_and_latency_metrics(node):
    async def go() -> str:
        async with NodeClient(node.url) as c:
            chain = (await c.status())["chain_id"]
            t = Tx.build(Identity.from_seed(b"m"), chain, 1, Profile("m", "x", "y", bytes(32)))
            await c.submit(t.raw)
            await c.wait_committed(t.id.hex(), 10)
            for raw in (t.raw, b"\x92garbage"):  # a replay and a malformed transaction
                try:
                    await c.submit(raw)
                except Exception:  # noqa: BLE001 - refusals are what we count
                    pass
            return await (await c.session.get(node.url + "/metrics")).text()

    m = metrics(run(go()))
    reasons = {s.labels["reason"]: s.value for s in m["medchain_tx_rejected"] if s.name.endswith("_total")}
    assert reasons.get("duplicate") == 1 and reasons.get("invalid transaction") == 1, reasons
    count = [s.value for s in m["medchain_commit_latency_seconds"] if s.name.endswith("_count")]
    assert count == [1.0]
    assert m["medchain_peers"][0].value == 0 and m["medchain_view"][0].value == 0


PRIVATE = True  # False shows the contrast: without the key the stolen identity does connect


def test_private_network_key_keeps_out_even_a_stolen_validator_identity(tmp_path):
    """With `swarm.key` (libp2p pnet) the validators commit as usual; a host holding a validator's own
    libp2p identity and address but not the key cannot connect to any of them."""
    from node.crypto.keys import Identity as Ident
    from node.p2p import swarmkey

    nodes = make_network(tmp_path, 4, params=Params(sender_rate=1e5, sender_burst=1e5), private_network=PRIVATE)
    if swarmkey.load(nodes[0].home) is not None:
        assert swarmkey.load(nodes[0].home) == swarmkey.load(nodes[3].home)
        assert (nodes[0].home / "swarm.key").stat().st_mode & 0o777 == 0o600
    start_all(nodes)
    try:
        genesis = Genesis.load(nodes[0].home / "genesis.json")

        async def go() -> tuple[list[str], dict]:
            async with NodeClient(nodes[1].url) as c:
                chain = (await c.status())["chain_id"]
                tx = Tx.build(Identity.from_seed(b"pnet"), chain, 1, Profile("p", "r", "o", bytes(32)))
                await c.submit(tx.raw)
                assert (await c.wait_committed(tx.id.hex(), 30))["status"] == "committed"
            nodes[3].stop()  # its identity is "stolen": same key, same address, no swarm key
            stolen = Ident.load(nodes[3].home / "node_key.json")
            me = genesis.validators[3].p2p
            impostor = P2PNode(stolen.p2p_secret, "127.0.0.1", int(me.split("/")[4]),
                               [v.p2p for v in genesis.validators], lambda p, d: None, network=genesis.network)
            await impostor.start()
            try:
                await asyncio.sleep(4.0)
                return impostor.connected_peers(), dict(impostor.stats)
            finally:
                await impostor.stop()
        peers, stats = run(go())
        assert peers == [], stats
        with pytest.raises(swarmkey.SwarmKeyError):
            (tmp_path / "bad").mkdir()
            (tmp_path / "bad" / "swarm.key").write_text("abcd")
            swarmkey.load(tmp_path / "bad")
    finally:
        for n in nodes:
            n.stop()
