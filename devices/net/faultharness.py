"""Fault injection against a real local network, under load, on a seeded (replayable) schedule.

Faults, at most f validators at a time: SIGKILL and restart, SIGSTOP and SIGCONT, and a partition at
the p2p layer (node/faults.py: the validators drop each other's messages; nothing restarts). The load
is closed-loop senders that count a transaction only once a validator acknowledged its commit, so the
check afterwards is exact: every acknowledged transaction is committed on every validator, and all
validators hold the same block hashes and state root.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass

from devices.net.localnet import NodeProcess
from devices.patient.client import ApiError, NodeClient
from node.block import max_faulty
from node.crypto.keys import Identity
from node.faults import write_cut
from node.tx import Profile, Tx

ACTIONS = ("kill", "pause", "cut")


@dataclass(frozen=True)
class Step:
    action: str
    targets: tuple[int, ...]
    hold_s: float  # how long the fault lasts
    gap_s: float  # healthy time after healing


def schedule(seed: int, n: int, steps: int) -> list[Step]:
    rng = random.Random(seed)
    f = max_faulty(n)
    return [Step(rng.choice(ACTIONS), tuple(sorted(rng.sample(range(n), f))), round(rng.uniform(1.0, 4.0), 2),
                 round(rng.uniform(1.0, 2.5), 2)) for _ in range(steps)]


async def acknowledged_load(nodes: list[NodeProcess], stop: asyncio.Event, committed: list[str], tag: bytes,
                            senders: int = 12, avoid: int | None = 0) -> None:
    """Senders spread over the validators (not `avoid`'s API), each waiting for its commit before its
    next nonce; `committed` collects the acknowledged transaction ids."""
    clients = [NodeClient(n.url) for n in nodes]
    for c in clients:
        await c.__aenter__()
    usable = [c for i, c in enumerate(clients) if i != avoid] or clients
    chain = None
    while chain is None:
        for c in usable:
            try:
                chain = (await c.status())["chain_id"]
                break
            except Exception:  # noqa: BLE001 - that validator is down right now
                await asyncio.sleep(0.1)

    async def sender(i: int) -> None:
        ident = Identity.from_seed(b"%s%d" % (tag, i))
        n, k = 1, i
        while not stop.is_set():
            c = usable[k % len(usable)]
            tx = Tx.build(ident, chain, n, Profile(f"p{n}", "r", "o", bytes(32)))
            try:
                try:
                    st = await c.tx(tx.id.hex())
                except ApiError as exc:  # 404: this validator has never seen it
                    st = {"status": "unknown" if exc.status == 404 else "error"}
                if st["status"] not in ("pending", "committed"):
                    await c.submit(tx.raw)  # new, or refused earlier (e.g. while a peer was down)
                st = await c.wait_committed(tx.id.hex(), 3)
            except Exception:  # noqa: BLE001 - any failure: that validator may be down
                k += 1  # try the next one
                await asyncio.sleep(0.1)
                continue
            if st["status"] == "committed":  # acknowledged: only now the next nonce
                committed.append(tx.id.hex())
                n += 1
    try:
        await asyncio.gather(*(sender(i) for i in range(senders)))
    finally:
        for c in clients:
            await c.close()


def _cut(nodes: list[NodeProcess], targets: tuple[int, ...]) -> None:
    for i, node in enumerate(nodes):
        if i in targets:
            write_cut(node.home, [j for j in range(len(nodes)) if j not in targets])
        else:
            write_cut(node.home, list(targets))


async def apply(nodes: list[NodeProcess], step: Step) -> None:
    if step.action == "kill":
        for t in step.targets:
            nodes[t].kill()
    elif step.action == "pause":
        for t in step.targets:
            nodes[t].pause()
    else:
        _cut(nodes, step.targets)


async def heal(nodes: list[NodeProcess], step: Step) -> None:
    if step.action == "kill":
        for t in step.targets:
            nodes[t].launch()  # on this (the main) thread: a supervised validator dies with its launching thread
            await asyncio.to_thread(nodes[t].wait_ready)
    elif step.action == "pause":
        for t in step.targets:
            nodes[t].resume()
    else:
        _cut(nodes, ())


async def converged(nodes: list[NodeProcess], timeout: float = 60.0, same_view: bool = True) -> list[dict]:
    """Wait until the validators hold the same chain (height, last block, state root) and, with
    `same_view`, are in the same view with no view change under way (a replica left alone in a later
    view would not vote); their statuses, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        heads = []
        for n in nodes:
            async with NodeClient(n.url) as c:
                heads.append(await c.status())
        keys = {(h["height"], h["last_block_hash"], h["state_root"])
                + ((h["consensus"]["view"], h["consensus"]["view_changing"]) if same_view else ()) for h in heads}
        if len(keys) == 1:
            return heads
        if time.monotonic() > deadline:
            raise AssertionError("validators did not converge: " + repr(
                [(h["height"], h["last_block_hash"][:12], h["consensus"]["view"]) for h in heads]))
        await asyncio.sleep(0.2)


async def assert_committed(nodes: list[NodeProcess], committed: list[str]) -> None:
    """Every acknowledged transaction is committed on every one of `nodes`."""
    for n in nodes:
        async with NodeClient(n.url) as c:
            for tid in committed:
                st = await c.tx(tid)
                if st["status"] != "committed":
                    raise AssertionError(f"acknowledged {tid} is {st['status']} on {n.url}")


async def run(nodes: list[NodeProcess], seed: int, steps: int, log=print) -> dict:
    """Run the schedule under load, heal, and check convergence and every acknowledged commit."""
    plan = schedule(seed, len(nodes), steps)
    committed: list[str] = []
    stop = asyncio.Event()
    load = asyncio.create_task(acknowledged_load(nodes, stop, committed, b"chaos%d-" % seed, avoid=None))
    t0 = time.monotonic()
    try:
        await asyncio.sleep(1.0)
        for i, step in enumerate(plan):
            log(f"[{time.monotonic() - t0:6.1f}s] step {i}: {step.action} {list(step.targets)} for {step.hold_s} s "
                f"({len(committed)} acknowledged so far)")
            await apply(nodes, step)
            await asyncio.sleep(step.hold_s)
            await heal(nodes, step)
            await asyncio.sleep(step.gap_s)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await load
    heads = await converged(nodes)
    await assert_committed(nodes, committed)
    return {"seed": seed, "schedule": [asdict(s) for s in plan], "acknowledged": len(committed),
            "height": heads[0]["height"], "views": [h["consensus"]["view"] for h in heads],
            "seconds": round(time.monotonic() - t0, 1)}


def _cmd(args) -> int:
    import json
    import tempfile
    from pathlib import Path

    from devices.net.localnet import make_network, supervised
    from node.genesis import Params

    with tempfile.TemporaryDirectory(prefix="medchain-faults-") as tmp:
        nodes = make_network(Path(args.dir or tmp), args.validators,
                             params=Params(sender_rate=1e5, sender_burst=1e5))
        for n in nodes:
            n.env["MEDCHAIN_FAULTS"] = "1"
        with supervised(nodes):  # as `medchain devnet`: no validator outlives this command
            quiet = args.json
            result = asyncio.run(run(nodes, args.seed, args.steps, log=(lambda s: None) if quiet else print))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"seed {result['seed']}: {args.steps} faults survived; {result['acknowledged']} acknowledged "
              f"transactions all committed on every validator; height {result['height']}, "
              f"views {result['views']}, {result['seconds']} s")
    return 0


def register(sub, add) -> None:
    """`medchain faults`: a seeded fault schedule against a fresh local network under load."""
    sp = add("faults", _cmd, "Kill, pause and partition f validators on a seeded schedule under load; "
                             "then check every acknowledged commit and that all validators converge.")
    sp.add_argument("--seed", type=int, default=1, help="the schedule's seed (the same seed replays it)")
    sp.add_argument("--steps", type=int, default=5, help="faults in the schedule")
    sp.add_argument("--validators", type=int, default=4)
    sp.add_argument("--dir", help="keep the validator homes (and their node.log) here")
