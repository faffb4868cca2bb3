"""Measure the adapter: 4 validators, each its own OS process on 127.0.0.1, every one broadcasting
N messages of 1 KiB at once; reports delivered messages/s and CPU per broadcast for each mode.

    python -m node.p2p.measure [--n 2000] [--gossip-n 300] [--modes direct,gossipsub]
                               [--muxer mplex] [--runner thread] [--nodes 4] [--size 1024]

Throughput counts deliveries (each broadcast is delivered n-1 times) over the wall time from the
"go" signal until the last process has received everything; CPU is the sum over the node
processes (all threads) for the same interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

from .identity import peer_id_from_secret


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def _child(args: argparse.Namespace) -> None:
    from .node import P2PNode

    addrs = args.addrs.split(",")
    me = args.child
    secret = bytes([me + 1]) * 32
    port = int(addrs[me].split("/")[4])
    others = len(addrs) - 1
    want = others * args.n
    got = 0
    done = asyncio.Event()

    def on_message(peer: str, data: bytes) -> None:
        nonlocal got
        got += 1
        if got >= want:
            done.set()

    node = P2PNode(secret, "127.0.0.1", port, addrs, on_message, mode=args.mode, muxer=args.muxer, runner=args.runner)
    await node.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(node.connected_peers()) < others and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if args.mode == "gossipsub":
        await asyncio.sleep(2.5)  # let the mesh form (heartbeat 1 s)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    t0, c0 = time.perf_counter(), time.process_time()
    payload = os.urandom(args.size)
    for k in range(args.n):
        node.broadcast(k.to_bytes(4, "big") + payload[4:])
        if k % 100 == 99:
            await asyncio.sleep(0)  # as a validator would: the loop keeps turning while it sends
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    except TimeoutError:
        pass
    t1, c1 = time.perf_counter(), time.process_time()
    print(json.dumps({"recv": got, "want": want, "wall": t1 - t0, "cpu": c1 - c0, "stats": node.stats}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (others may still be receiving)
    await node.stop()


def _run_mode(mode: str, n: int, args: argparse.Namespace) -> dict:
    ports = _free_ports(args.nodes)
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{peer_id_from_secret(bytes([i + 1]) * 32)}" for i, p in enumerate(ports)]
    cmd = [sys.executable, "-m", "node.p2p.measure", "--child-mode", mode, "--n", str(n), "--addrs", ",".join(addrs)]
    cmd += ["--muxer", args.muxer, "--runner", args.runner, "--size", str(args.size), "--timeout", str(args.timeout)]
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
    ap.add_argument("--muxer", default="mplex", choices=("mplex", "yamux"))
    ap.add_argument("--runner", default="thread", choices=("thread", "guest"))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--addrs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        try:
            import uvloop

            uvloop.run(_child(args))
        except ImportError:
            asyncio.run(_child(args))
        return 0
    print(f"# {args.nodes} nodes, {args.size}-byte broadcasts, muxer {args.muxer}, trio runner {args.runner}")
    for mode in args.modes.split(","):
        n = args.gossip_n if mode == "gossipsub" else args.n
        print(json.dumps(_run_mode(mode, n, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
