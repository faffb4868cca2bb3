"""Measure the adapter: 4 validators, each its own OS process on 127.0.0.1, every one broadcasting
N messages of 1 KiB at once; reports delivered messages/s and CPU per broadcast for each mode.

    python -m node.p2p.measure [--n 2000] [--gossip-n 300] [--modes direct,gossipsub]
                               [--muxer auto|mplex|yamux] [--runner thread|guest] [--nodes 4]
                               [--size 1024] [--unsigned] [--busy-ms MS] [--rtt K] [--rate R]

--rtt K instead times K sequential round trips between 2 nodes (send() in direct mode, broadcast()
both ways in gossipsub mode). --busy-ms keeps every node's asyncio loop inside a blocking,
GIL-releasing call (like an LMDB commit or a batch of coincurve verifies) most of the time.
--rate R paces each node's broadcasts at R per second, as a validator's come, instead of all at once.

Throughput counts deliveries (each broadcast is delivered n-1 times) over the wall time from the
"go" signal until the last process has received everything; CPU is the sum over the node
processes (all threads) for the same interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

from node.multiaddr import host_port, peer_id
from node.ports import free_ports

from .identity import peer_id_from_secret


async def _child(args: argparse.Namespace) -> None:
    from .node import P2PNode

    addrs = args.addrs.split(",")
    node_ids = [peer_id(a) for a in addrs]
    me = args.child
    secret = bytes([me + 1]) * 32
    port = host_port(addrs[me])[1]
    others = len(addrs) - 1
    want = others * args.n
    got = 0
    done = asyncio.Event()

    pong = asyncio.Event()

    def on_message(peer: str, data: bytes) -> None:
        nonlocal got
        if args.rtt:  # node 0 pings node 1, which echoes (direct: send(); gossipsub: broadcast())
            if me == 0:
                pong.set()
            elif args.mode == "gossipsub":
                node.broadcast(data)
            else:
                node.send(peer, data)
            return
        got += 1
        if got >= want:
            done.set()

    node = P2PNode(
        secret,
        "127.0.0.1",
        port,
        addrs,
        on_message,
        mode=args.mode,
        muxer=None if args.muxer == "auto" else args.muxer,
        runner=args.runner,
        strict_signing=not args.unsigned,
    )
    await node.start()
    loop = asyncio.get_running_loop()
    if args.busy_ms:  # the validator's loop busy in GIL-releasing calls (LMDB, coincurve)

        async def busy() -> None:
            while True:
                time.sleep(args.busy_ms / 1000)
                await asyncio.sleep(0)

        busy_task = loop.create_task(busy())  # noqa: F841, RUF006 - runs until the process exits
    deadline = loop.time() + 30
    while len(node.connected_peers()) < others and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if args.mode == "gossipsub":
        await asyncio.sleep(2.5)  # let the mesh form (heartbeat 1 s)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    t0, c0 = time.perf_counter(), time.process_time()
    payload = os.urandom(args.size)
    if args.rtt:
        rtts = []
        for _ in range(args.rtt if me == 0 else 0):
            pong.clear()
            t = time.perf_counter()
            if args.mode == "gossipsub":
                node.broadcast(payload)
            else:
                node.send(node_ids[1], payload)
            await pong.wait()
            rtts.append(time.perf_counter() - t)
        rtts.sort()
        res = {"recv": 0, "want": 0, "wall": 1e-9, "cpu": 0, "stats": node.stats, "rtt": rtts}
        print(json.dumps(res), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        await node.stop()
        return
    for k in range(args.n):
        node.broadcast(k.to_bytes(4, "big") + payload[4:])
        if args.rate:  # paced: what one message costs when messages come one at a time
            await asyncio.sleep(max(0.0, t0 + (k + 1) / args.rate - time.perf_counter()))
        elif k % 100 == 99:
            await asyncio.sleep(0)  # as a validator would: the loop keeps turning while it sends
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.timeout)
    t1, c1 = time.perf_counter(), time.process_time()
    print(json.dumps({"recv": got, "want": want, "wall": t1 - t0, "cpu": c1 - c0, "stats": node.stats}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (others may still be receiving)
    await node.stop()


def _run_mode(mode: str, n: int, args: argparse.Namespace) -> dict:
    ports = free_ports(args.nodes)
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{peer_id_from_secret(bytes([i + 1]) * 32)}" for i, p in enumerate(ports)]
    cmd = [sys.executable, "-m", "node.p2p.measure", "--child-mode", mode, "--n", str(n), "--addrs", ",".join(addrs)]
    cmd += ["--muxer", args.muxer, "--runner", args.runner, "--size", str(args.size), "--timeout", str(args.timeout)]
    cmd += ["--unsigned"] if args.unsigned else []
    cmd += ["--rtt", str(args.rtt)] if args.rtt else []
    cmd += ["--busy-ms", str(args.busy_ms), "--rate", str(args.rate)]
    procs = [
        subprocess.Popen([*cmd, "--child", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(args.nodes)
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"child failed to start: {line!r}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(timeout=15)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if args.rtt:
        rtt = results[0]["rtt"]
        pct = {q: round(1000 * rtt[min(len(rtt) - 1, int(q / 100 * len(rtt)))], 3) for q in (50, 90, 99)}
        return {
            "mode": mode,
            "round_trips": len(rtt),
            "rtt_ms_p50": pct[50],
            "rtt_ms_p90": pct[90],
            "rtt_ms_p99": pct[99],
        }
    recv = sum(r["recv"] for r in results)
    want = sum(r["want"] for r in results)
    wall = max(r["wall"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    return {
        "mode": mode,
        "broadcasts": n * args.nodes,
        "delivered": recv,
        "expected": want,
        "wall_s": round(wall, 3),
        "deliveries_per_s": round(recv / wall),
        "broadcasts_per_s": round(recv / (args.nodes - 1) / wall),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_broadcast": round(1000 * cpu / (n * args.nodes), 3),
        "drops": sum(r["stats"]["drops"] + r["stats"]["gossip_dropped"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node.p2p.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="broadcasts per node in direct mode")
    ap.add_argument("--gossip-n", type=int, default=300, help="broadcasts per node in gossipsub mode")
    ap.add_argument("--modes", default="direct,gossipsub")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--muxer", default="auto", choices=("auto", "mplex", "yamux"), help="auto: the P2PNode default")
    ap.add_argument("--runner", default="thread", choices=("thread", "guest"))
    ap.add_argument("--unsigned", action="store_true", help="gossipsub without message signing")
    ap.add_argument("--rtt", type=int, default=0, help="instead: K sequential round trips between 2 nodes")
    ap.add_argument("--busy-ms", type=float, default=0.0, help="keep each node's asyncio loop busy (GIL released)")
    ap.add_argument("--rate", type=float, default=0.0, help="broadcasts per second per node (0: all at once)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--addrs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rtt and args.child is None:
        args.nodes = 2
    if args.child is not None:
        try:
            import uvloop

            uvloop.run(_child(args))
        except ImportError:
            asyncio.run(_child(args))
        return 0
    print(
        f"# {args.nodes} nodes, {args.size}-byte broadcasts, muxer {args.muxer}, trio runner {args.runner},"
        f" gossipsub signing {'off' if args.unsigned else 'on'}"
    )
    for mode in args.modes.split(","):
        n = args.gossip_n if mode == "gossipsub" else args.n
        print(json.dumps(_run_mode(mode, n, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
