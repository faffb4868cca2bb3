"""`medchain loadtest` honours Retry-After: against one validator whose per-client and per-sender
limits are far below the offered load, every transaction still commits and none is refused."""

from __future__ import annotations

from devices.load.loadgen import run_load
from tests.conftest import run, running_network


def test_loadtest_waits_out_rate_limits_and_commits_everything(tmp_path):
    # 4 requests/s per client IP, 20 transactions/s per sender: a flood is throttled again and again
    with running_network(tmp_path, 1, client_rate=4, client_burst=4, sender_rate=20, sender_burst=20) as (nd,):
        res = run(run_load([nd.url], senders=4, per_sender=60, batch=40, lanes=2, timeout=120, kind="write"))
        throttled = nd.log_tail(10**6)
    assert res.refused == 0
    assert res.committed == res.submitted == 240
    assert "Traceback" not in throttled


def test_the_load_followers_count_only_proven_blocks_and_leave_a_liar(tmp_path):
    """The follower `medchain loadtest` and the fleet share (devices/load/follow.py): given the
    genesis, a block counts once its certificate and transaction ids check and it is the next one.
    A validator that adds a transaction id (a commit that never happened), answers with a later
    certified block (hiding the one asked for) or withholds blocks is left for the next one."""
    from aiohttp import web

    from devices.load.follow import Follower
    from devices.patient.client import NodeClient
    from node.genesis import Genesis

    async def scenario(url: str, genesis: Genesis, lie: str) -> tuple[list[dict], Follower, bool]:
        async def lying_block(req: web.Request) -> web.Response:
            h = int(req.match_info["h"])
            async with NodeClient(url) as honest:
                blk = await honest.next_block(h + 1 if lie == "skip" else h, 1)
            if blk is None or lie == "withhold":
                return web.Response(status=404)
            if lie == "added id":
                blk["tx_ids"] = blk["tx_ids"] + ["ab" * 32]
            return web.json_response(blk)

        app = web.Application()
        app.router.add_get("/v1/blocks/{h}", lying_block)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        liar = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        clients = [NodeClient(liar), NodeClient(url)]
        try:
            head = (await clients[1].status())["height"]
            f = Follower(clients, genesis, genesis.chain_id, 0, start=0)
            got = []
            async for blk in f.blocks(wait_s=1):
                if blk is not None:
                    got.append(blk)
                if f.height == head:
                    break
            taken = False
            if lie == "added id":  # without the genesis the lie is taken, and the count says so
                unchecked = Follower([NodeClient(liar)], None, genesis.chain_id, 0)
                async for blk in unchecked.blocks(wait_s=1):
                    if blk is not None:
                        taken = "ab" * 32 in blk["tx_ids"] and unchecked.proven_or_none is None
                        break
            return got, f, taken
        finally:
            for c in clients:
                await c.close()
            await runner.cleanup()

    with running_network(tmp_path, 1) as (nd,):
        genesis = Genesis.load(nd.home / "genesis.json")
        results = [run(run_load([nd.url], senders=2, per_sender=5, batch=5, lanes=1, timeout=60, kind=kind,
                                genesis=genesis)) for kind in ("write", "profile")]  # two runs: two blocks at least
        seen = {lie: run(scenario(nd.url, genesis, lie)) for lie in ("added id", "skip", "withhold")}
    for res in results:
        assert res.committed == 10 and res.blocks_proven == res.blocks > 0 and res.blocks_refused == 0
    for lie, (got, f, _taken) in seen.items():
        assert len(got) >= 2 and [b["height"] for b in got] == list(range(1, len(got) + 1)), lie
        assert f.proven == len(got) and f.ask == 1, lie  # ends on the honest validator
        assert f.refused == (0 if lie == "withhold" else 1), (lie, f.refused)
        assert all("ab" * 32 not in b["tx_ids"] for b in got), lie
    assert seen["added id"][2]
