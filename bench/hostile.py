"""Honest latency with and without hostile clients, on one real validator (issue 16).

    .venv/bin/python -m bench.hostile [--phase-s 6] [--honest 20] [--json PATH]

Prints the per-transaction floor (../shared/bench/floor.py) first. Then one validator with the
default limits (but a mempool of 1,000, the issue's sybil setting) serves an honest load all along:
`--honest` senders on 127.0.0.1, each submitting a profile update every 0.25 s and waiting for its
commit, and a /v1/status poll every 50 ms. For each attack, a phase without it and then a phase
with it, back to back, so the machine's drift hits both alike. The attacker is its own process
(`python -m bench.hostile --attack NAME --url URL`, on 127.0.0.2 and up), so its client work does
not slow the measuring client; it prepares (signs) before the baseline phase and attacks on cue.
Per phase: honest commits, refusals, p50/p99 commit latency; /v1/status p50/p99/max; validator
RSS (peak and end); the attack's outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp

from devices.load.attacks import post_batches, repeat, rss_mb, session, slow_headers, stalled_upload, sybil_batches
from devices.net.localnet import make_network
from node.crypto.keys import Identity
from node.genesis import Params
from node.tx import Profile, Tx

ATTACKS = ("batch-flood", "uploads", "sybil", "slowloris")
FLOOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "floor.py"


# ---- the attacker process ----------------------------------------------------------------------

async def attack(name: str, url: str, seconds: float) -> dict:
    port = int(url.rsplit(":", 1)[1])
    async with session() as s, s.get(url + "/v1/status") as r:
        chain = (await r.json())["chain_id"]
    if name == "batch-flood":  # one IP, 1,000-transaction batches from fresh keys, back to back
        bodies = sybil_batches(chain, b"flood", 12, 1000)
        run = lambda: post_batches(url, "127.0.0.2", bodies * 50, seconds)  # noqa: E731
    elif name == "sybil":  # two IPs, 500 fresh single-transaction senders a batch (20,000 each: their budget)
        per_ip = {ip: sybil_batches(chain, ip.encode(), 40, 500) for ip in ("127.0.0.2", "127.0.0.3")}

        async def run() -> Counter:  # then the same again (duplicates, replays) until the phase ends
            got = await asyncio.gather(*(post_batches(url, ip, b * 3, seconds) for ip, b in per_ip.items()))
            return sum(got, Counter())
    elif name in ("uploads", "slowloris"):
        async def run() -> Counter:
            end = time.monotonic() + seconds  # from the cue
            if name == "uploads":  # 200 uploads from 10 IPs, each stalled one byte short of 2 MiB
                ips = iter(f"127.0.0.{10 + k % 10}" for k in range(10**6))
                return await repeat(lambda: stalled_upload(next(ips), port, max(0.1, end - time.monotonic())),
                                    seconds, width=200, max_total=600)
            # 1,500 unfinished request heads from one IP (the cap is 1,024), reopened when closed
            return await repeat(lambda: slow_headers("127.0.0.4", port, max(0.1, end - time.monotonic())),
                                seconds, width=1500, max_total=5000)
    else:
        raise SystemExit(f"unknown attack {name}")
    print("ready", flush=True)
    sys.stdin.readline()  # the cue
    t0 = time.monotonic()
    got = await run()
    return {"outcomes": {str(k): v for k, v in sorted(got.items(), key=str)}, "seconds": round(time.monotonic() - t0, 2)}


# ---- the measuring side --------------------------------------------------------------------------

def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def phase(url: str, pid: int, chain: str, senders: list[Identity], nonces: list[int], seconds: float) -> dict:
    """The honest load for `seconds`: commit latencies, refusals, /v1/status latencies, RSS."""
    lat: list[float] = []
    status_ms: list[float] = []
    refused: Counter = Counter()
    rss: list[float] = []
    end = time.monotonic() + seconds

    async def sender(i: int, s: aiohttp.ClientSession) -> None:
        t_next = time.monotonic() + i * 0.25 / len(senders)
        while t_next < end:
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            t_next += 0.25
            tx = Tx.build(senders[i], chain, nonces[i], Profile(f"h{nonces[i]}", "nurse", "org", bytes(32)))
            t0 = time.monotonic()
            async with s.post(url + "/v1/tx", data=tx.raw, headers={"Content-Type": "application/msgpack"}) as r:
                if r.status != 202:
                    refused[r.status] += 1
                    continue
            nonces[i] += 1
            async with s.get(f"{url}/v1/tx/{tx.id.hex()}", params={"wait": "30"}) as r:
                st = await r.json()
            if st["status"] == "committed":
                lat.append(time.monotonic() - t0)
            else:
                refused[st["status"]] += 1

    async def poll(s: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            async with s.get(url + "/v1/status") as r:
                await r.read()
            status_ms.append((time.monotonic() - t0) * 1000)
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.05)

    async with session(limit=0) as s:
        await asyncio.gather(poll(s), *(sender(i, s) for i in range(len(senders))))
    return {"commits": len(lat), "refused": dict(refused), "commit_p50_ms": round(pct(lat, 0.5) * 1000, 1),
            "commit_p99_ms": round(pct(lat, 0.99) * 1000, 1), "status_p50_ms": round(pct(status_ms, 0.5), 1),
            "status_p99_ms": round(pct(status_ms, 0.99), 1), "status_max_ms": round(max(status_ms), 1),
            "rss_peak_mb": round(max(rss), 1), "rss_end_mb": round(rss[-1], 1)}


def measure(args: argparse.Namespace) -> list[dict]:
    floor = subprocess.run([sys.executable, str(FLOOR)], capture_output=True, text=True, check=True).stdout
    print(f"per-transaction floor ({FLOOR}): {floor.strip()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medchain-hostile-") as tmp:
        (n,) = make_network(Path(tmp), 1, params=Params(mempool_capacity=1000))
        n.start()
        try:
            with urllib.request.urlopen(n.url + "/v1/status") as r:
                chain = json.loads(r.read())["chain_id"]
            senders = [Identity.from_seed(b"bench-honest-%d" % i) for i in range(args.honest)]
            nonces = [1] * args.honest
            print(f"validator RSS idle {rss_mb(n.proc.pid):.0f} MB; honest load {args.honest * 4} tx/s; "
                  f"phases of {args.phase_s:g} s", flush=True)
            for name in args.attacks:
                child = subprocess.Popen([sys.executable, "-m", "bench.hostile", "--attack", name, "--url", n.url,
                                          "--phase-s", str(args.phase_s)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         cwd=Path(__file__).resolve().parents[1])
                assert child.stdout.readline().strip() == "ready", f"{name} attacker failed"
                base = asyncio.run(phase(n.url, n.proc.pid, chain, senders, nonces, args.phase_s))
                child.stdin.write("go\n")
                child.stdin.flush()
                hit = asyncio.run(phase(n.url, n.proc.pid, chain, senders, nonces, args.phase_s))
                out = json.loads(child.stdout.read())
                child.wait(30)
                rows += [{"attack": name, "with": False, **base}, {"attack": name, "with": True, **hit, **out}]
                print_rows(rows[-2:])
                time.sleep(2.0)  # let the attack's connections and memory go before the next baseline
            print(f"validator RSS after all attacks {rss_mb(n.proc.pid):.0f} MB")
        finally:
            n.stop()
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['attack']:<12} {'with' if r['with'] else 'without':<8} commits {r['commits']:>4} "
              f"refused {r['refused'] or '-'}  commit p50 {r['commit_p50_ms']:>7} ms p99 {r['commit_p99_ms']:>7} ms | "
              f"status p50 {r['status_p50_ms']:>6} p99 {r['status_p99_ms']:>6} max {r['status_max_ms']:>7} ms | "
              f"RSS peak {r['rss_peak_mb']:>5.0f} end {r['rss_end_mb']:>5.0f} MB"
              + (f" | attack {r['outcomes']}" if r["with"] else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase-s", type=float, default=6.0)
    ap.add_argument("--honest", type=int, default=20, help="honest senders, 4 tx/s each")
    ap.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--attack", help=argparse.SUPPRESS)  # the attacker process
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack:
        print(json.dumps(asyncio.run(attack(args.attack, args.url, args.phase_s))), flush=True)
        return
    rows = measure(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
