"""`medchain bench`: named workloads of the wearable fleet against a devnet (or given validators),
with a JSON report and a PNG plot under bench/results/ (bench/README.md explains every figure).

Workloads:
  fleet   write-heavy: N wearables behind M phones, natural windows, then the no-lost-readings check
  clinic  read-heavy: staff reads (committed read, signed fetch, decrypt) over a smaller fleet's writes
  sweep   open-loop writes at each offered rate in --rates (the throughput-latency curve)
  budget  one offered rate three times: all CPUs free, the validators pinned to one CPU, then the
          generator pinned to one CPU (optionally reniced): throughput must follow the validators' budget
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from devices import aio
from devices.load.benchmeter import (
    Validators,
    energy,
    machine,
    plot,
    rapl_joules,
    rapl_zones,
    set_affinity,
)
from devices.load.fleet import FleetConfig
from devices.load.fleet_check import run_fleet
from devices.load.follow import describe
from devices.load.memcap import CapError, MemoryCap
from devices.wearable import ble
from devices.wearable.wearables import DEFAULT_PERIOD_MS, make_wearable
from node.genesis import Genesis, load_checked

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


class Progress:
    """One live line on stderr: elapsed, sent, committed, current commit rate, backlog, p50."""

    def __init__(self, label: str) -> None:
        self.label, self.last = label, None

    def __call__(self, snap: dict) -> None:
        rate = 0.0
        if self.last is not None and snap["t"] > self.last["t"]:
            rate = (snap["committed"] - self.last["committed"]) / (snap["t"] - self.last["t"])
        self.last = snap
        sys.stderr.write(f"\r  [{self.label}] {snap['t']:5.0f} s  sent {snap['submitted']:7d}  committed "
                         f"{snap['committed']:7d} ({rate:6.0f}/s)  in flight {snap['pending']:5d}  queued "
                         f"{snap['queued']:5d}  p50 {snap['p50_ms']:6.0f} ms   ")
        sys.stderr.flush()


def wearable_energy(link: ble.LinkParams) -> dict:
    """Radio energy per reading and per day for each wearable kind at its default period."""
    out = {"radio": link.radio.name, "connection_interval_ms": link.interval_ms, "att_mtu": link.att_mtu,
           "loss": link.loss, "slave_latency": link.slave_latency}
    for kind, period in DEFAULT_PERIOD_MS.items():
        w = make_wearable(kind, "e", 1)
        size = max(len(w.next_frame(i * period)[1]) for i in range(20))
        d = ble.daily_energy(size, period, link)
        out[kind] = {"period_ms": period, "frame_bytes": size, "bytes_on_air_per_reading": round(
            d.bytes_on_air_per_reading, 1), "uj_per_reading": round(d.uj_per_reading, 2),
            "j_per_day": round(d.j_per_day, 2), "avg_current_ua": round(d.avg_current_ua, 1)}
    return out


def _steps(args: argparse.Namespace) -> list[tuple[str, FleetConfig, str]]:
    link = ble.LinkParams(interval_ms=args.conn_interval, loss=args.ble_loss, att_mtu=args.att_mtu)

    def cfg(**kw: object) -> FleetConfig:
        base = {"wearables": args.wearables, "phones": args.phones, "seconds": args.seconds,
                "window_s": args.window, "staff": args.staff, "link": link, "seed": args.seed,
                "drain_timeout": args.drain_timeout, "linger_ms": args.linger_ms}
        return FleetConfig(**{**base, **kw})
    w = args.workload
    if w == "fleet":
        return [("fleet", cfg(closed=args.closed, rate=args.rate, grants=args.grants, reads=args.reads), "")]
    if w == "clinic":
        return [("clinic", cfg(reads=args.reads or 200.0, grants=args.grants or 1.0, read_fetch=args.read_fetch), "")]
    if w == "sweep":
        return [(f"{r:g} tx/s", cfg(rate=r), "") for r in args.rates]
    if w == "edge":  # edge hardware: every validator confined to one core (CPU 0) for every step
        return [(f"{r:g} tx/s, 1 core", cfg(rate=r), "validators") for r in args.rates]
    if w == "budget":
        r = args.rate or 1000.0
        nice = f", nice {args.budget_nice}" if args.budget_nice else ""
        return [("all CPUs free", cfg(rate=r), ""), (f"validators on 1 CPU{nice}", cfg(rate=r), "validators"),
                (f"generator on 1 CPU{nice}", cfg(rate=r), "generator")]
    raise ValueError(f"unknown workload {w!r}")


def _renice(pid: int, nice: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):  # Linux nice is per thread
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except (ProcessLookupError, PermissionError):  # lowering nice again needs CAP_SYS_NICE
            pass


def _pin(which: str, pids: list[int] | None, nice: int = 0) -> None:
    """Take half the machine (and, with nice, most of the contended share) away from one side."""
    if which == "validators":
        if not pids:
            raise ValueError("the budget workload needs the validators' pids: run without --node")
        for p in pids:
            set_affinity(p, {0})
            _renice(p, nice)
    elif which == "generator":
        set_affinity(os.getpid(), {0})
        _renice(os.getpid(), nice)


def _unpin(which: str, pids: list[int] | None) -> None:
    everything = set(range(os.cpu_count() or 1))
    if which == "validators":
        for p in pids or []:
            set_affinity(p, everything)
            _renice(p, 0)
    elif which == "generator":
        set_affinity(os.getpid(), everything)
        _renice(os.getpid(), 0)


def _row(label: str, cfg: FleetConfig, res: dict, d: dict, eng: dict) -> dict:
    return {"label": label, "offered_rate": cfg.rate or None, "mode": "closed" if cfg.closed else (
        "open loop" if cfg.rate else "natural windows"), "wearables": cfg.wearables, "phones": cfg.phones,
        "seconds": cfg.seconds, **{k: res[k] for k in (
            "send_rate", "tps", "submitted", "committed", "committed_by_kind", "failed", "failed_by_kind",
            "overloaded_retried", "overload_refusals", "conflicts_resent", "conflicts", "unfinished", "blocks_proven", "blocks_refused", "latency_ms", "window_to_commit_ms", "generator_cpu_s", "generator_cpu_ms_per_tx",
            "generator_cpu_wearables_s", "generator_cpu_us_per_reading", "generator_cpu_phones_ms_per_tx",
            "readings_emitted", "readings_committed", "readings_unsent", "drain", "starved_arrivals", "reads_decrypted", "reads_refused", "reads_failed", "ble")},
        **d, "energy": eng, **({"check": res["check"]} if "check" in res else {})}


def run_bench(args: argparse.Namespace, argv: list[str]) -> dict:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its validators
    say = sys.stderr if getattr(args, "json", False) else sys.stdout  # --json: stdout holds only the report
    from devices.load.floor import floor_line, measure_floor
    floor_us = measure_floor()  # before the devnet starts: the floor on an idle machine
    print(floor_line(floor_us), file=say, flush=True)
    nodes, tmp = [], None
    genesis = None  # with it the fleet's followers check every block's certificate (node/proof.py)
    if args.node:
        urls, pids = args.node, None
        if getattr(args, "genesis", None):
            genesis = load_checked(Path(args.genesis))  # a file edited after it was finalized is refused
    else:
        from devices.net.localnet import ONE_ADDRESS_FLEET, make_network, start_all
        from node.operator import parse_params
        tmp = tempfile.TemporaryDirectory(prefix="medchain-bench-")
        # the fleet's proxy is thousands of phones behind one address; --param may still set them
        lifted = [f"{k}={v}" for k, v in ONE_ADDRESS_FLEET.items()]
        nodes = make_network(Path(tmp.name), args.validators, p2p_mode=args.p2p,
                             params=parse_params([*lifted, *getattr(args, "param", [])]))
        start_all(nodes)
        urls, pids = [n.url for n in nodes], [n.proc.pid for n in nodes]
        genesis = Genesis.load(nodes[0].home / "genesis.json")
    cap = None
    try:
        if getattr(args, "memory_mb", None):
            cap = _cap(args.memory_mb, pids)
            print(f"  validators confined to a {args.memory_mb:g} MiB memory cgroup ({cap.path}; page cache "
                  "charged)", file=say, flush=True)
        vals = Validators(urls, pids)
        zones = rapl_zones()
        print(f"medchain bench {args.workload}: {len(urls)} validators ({', '.join(urls)})", file=say, flush=True)
        # idle baseline: what the validators (or the package, with RAPL) use doing nothing
        a, j0 = vals.sample(), rapl_joules(zones) if zones else None
        time.sleep(args.idle_seconds)
        b, j1 = vals.sample(), rapl_joules(zones) if zones else None
        idle_s = b["t"] - a["t"]
        idle_cpu = (sum(b["cpu"]) - sum(a["cpu"])) / idle_s if pids else 0.0
        idle_w = (j1 - j0) / idle_s if zones else None
        print(f"  idle: validators use {idle_cpu:.3f} CPU-s/s together"
              + (f", package {idle_w:.1f} W" if zones else "") + "; energy method: "
              + ("RAPL" if zones else "CPU-seconds x power model (no RAPL on this machine)"), file=say, flush=True)
        steps = []
        for label, cfg, pin in _steps(args):
            _pin(pin, pids, args.budget_nice)
            marks: dict = {}

            def mark(name: str, marks: dict = marks) -> None:  # counters over the measured window only
                marks[name] = (vals.sample(), rapl_joules(zones) if zones else None)
            try:
                res = aio.run(run_fleet(urls, cfg, Progress(label), args.check_sample if args.workload == "fleet" else 0,
                                     mark, genesis))
            finally:
                _unpin(pin, pids)
            (a, j0), (b, j1) = marks["start"], marks["end"]
            sys.stderr.write("\n")
            d = Validators.delta(a, b)
            cpu = sum(d.get("validator_cpu_s", [0.0]))
            done = res["committed"] + res["drain"]["writes_committed"]  # the validators' CPU covers the drain too
            eng = energy(cpu, idle_cpu, b["t"] - a["t"], done, (j1 - j0) if zones else None, idle_w)
            if not pids:
                eng = {"method": "not measured: validators given by --node (no pids to read CPU from)"}
            steps.append(_row(label, cfg, res, d, eng))
            if cap is not None:
                steps[-1]["memory_cap"] = cap.usage()
            if pids and done:
                per = cpu / len(pids) / done * 1e6
                steps[-1]["validator_cpu_us_per_tx"] = round(per, 1)
                steps[-1]["floor_ratio"] = round(per / floor_us, 2) if floor_us else None
            print(_line(steps[-1]), file=say, flush=True)
            if args.pause and label != _steps(args)[-1][0]:
                time.sleep(args.pause)  # let the validators drain between steps
        heads = vals.sample()["heads"]
    finally:
        for n in nodes:
            n.stop()
        if cap is not None:
            cap.close()
        if tmp:
            tmp.cleanup()
    return {"workload": args.workload, "validators": len(urls), "machine": machine(argv), "floor_us": floor_us,
            "crypto": b.get("crypto"), "idle": {"validator_cpu_s_per_s": idle_cpu, "rapl_w": idle_w},
            "validators_agree": len({h[1:] for h in heads if h[0] == heads[0][0]}) == 1,
            "wearable_energy": wearable_energy(ble.LinkParams(interval_ms=args.conn_interval, loss=args.ble_loss,
                                                              att_mtu=args.att_mtu)), "steps": steps}


def _cap(limit_mb: float, pids: list[int] | None) -> MemoryCap:
    """The validators moved into one memory cgroup (--memory-mb)."""
    if not pids:
        raise SystemExit("--memory-mb needs the validators' pids: run without --node")
    try:
        cap = MemoryCap(limit_mb)
    except CapError as exc:
        raise SystemExit(f"--memory-mb: {exc}") from None
    for p in pids:
        cap.add(p)
    return cap


def _line(s: dict) -> str:
    lat = s["latency_ms"] or {k: float("nan") for k in ("min", "avg", "p50", "p95", "p99", "max")}
    e2e = {int(k): v for k, v in (s.get("window_to_commit_ms") or {}).items()}
    e = s["energy"]
    ej = (f"RAPL {e['j_per_tx']:.4f} J/tx" if "j_per_tx" in e and e["j_per_tx"] is not None else
          "  ".join(f"{k} {m['j_per_tx']:.4f} J/tx" for k, m in e.get("models", {}).items() if m["j_per_tx"]))
    out = (f"  {s['label']}: sent {s['send_rate']:.0f}/s, committed {s['tps']:.0f} tx/s ({s['committed']} ok, "
           f"{s['failed']} failed, {s['unfinished']} unfinished, {s.get('overloaded_retried', 0)} refused with 429/503 "
           f"and sent again ({s.get('overload_refusals', 0)} refusals), {s.get('conflicts_resent', 0)} refused with 409 "
           f"and signed again; blocks {describe(s.get('blocks_proven'), s.get('blocks_refused', 0))}); latency ms min {lat['min']:.0f} avg {lat['avg']:.0f}"
           f" p50 {lat['p50']:.0f} p95 {lat['p95']:.0f} p99 {lat['p99']:.0f} max {lat['max']:.0f}; window closed to "
           f"commit p50 {e2e.get(50, float('nan')):.0f} p99 {e2e.get(99, float('nan')):.0f}\n"
           f"    generator {s['generator_cpu_ms_per_tx']:.3f} ms CPU per tx ({s['generator_cpu_s']:.1f} s: wearables"
           f" + links {s['generator_cpu_us_per_reading']:.0f} us per reading, phones + proxy "
           f"{s['generator_cpu_phones_ms_per_tx']:.3f} ms per tx)")
    if "validator_cpu_s" in s:
        out += (f"; validator CPU s {s['validator_cpu_s']}, peak RSS MB {s['validator_rss_peak_mb']} (at the end: "
                f"anonymous {s.get('validator_rss_anon_end_mb')}, LMDB and other file pages "
                f"{s.get('validator_rss_file_end_mb')}); "
                f"PBFT messages per block {s['pbft_messages_per_block']}\n    energy: {ej}")
    if "validator_cpu_us_per_tx" in s:
        ratio = f" = {s['floor_ratio']:.1f}x the floor" if s.get("floor_ratio") else ""
        out += f"\n    validator CPU per committed tx per validator: {s['validator_cpu_us_per_tx']:.0f} us{ratio}"
    if "memory_cap" in s:
        m = s["memory_cap"]
        out += (f"\n    memory cgroup of {m['limit_mb']:g} MiB (all validators, page cache charged): {m['now_mb']} MiB "
                f"at the end, peak so far {m['peak_mb']} MiB, the limit hit {m['limit_hits']} times"
                + (f", {m['oom_kills']} OOM kills" if m["oom_kills"] >= 0 else ""))
    if "check" in s:
        c = s["check"]
        out += (f"\n    readings: emitted {c['readings_emitted']}, in committed blobs {c['readings_in_committed_blobs']}, "
                f"lost {c['readings_lost']}; sampled {c['sampled_patients']} patients: "
                f"{c['sampled_readings_decrypted']}/{c['sampled_readings_expected']} readings decrypted by staff, "
                f"{c['sampled_windows_mismatched']} windows mismatched")
    return out


def main(args: argparse.Namespace, argv: list[str]) -> int:
    report = run_bench(args, argv)
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.workload}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    plot(report, stem.with_suffix(".png"))
    report["files"] = [str(stem.with_suffix(x)) for x in (".json", ".png") if stem.with_suffix(x).exists()]
    if getattr(args, "json", False):
        print(json.dumps(report, indent=1, default=str))
        return 1 if _bad(report) else 0
    we = report["wearable_energy"]
    print(f"wearables ({we['radio']}, {we['connection_interval_ms']} ms interval, {we['loss']:.0%} loss): "
          + "; ".join(f"{k} {v['uj_per_reading']} uJ/reading, {v['j_per_day']} J/day" for k, v in we.items()
                      if isinstance(v, dict)))
    print(f"validators agree on the last block: {'yes' if report['validators_agree'] else 'NO'}")
    print(f"report {stem.with_suffix('.json')}" + (f"\nplot   {stem.with_suffix('.png')}"
                                                   if stem.with_suffix(".png").exists() else ""))
    return 1 if _bad(report) else 0


def _bad(report: dict) -> bool:
    return any(s["unfinished"] or s.get("check", {}).get("readings_lost") for s in report["steps"])


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("workload", choices=["fleet", "clinic", "sweep", "budget", "edge"])
    sp.add_argument("--node", action="append", help="target these validators (repeat; default: start a devnet)")
    sp.add_argument("--genesis", help="with --node: the network's genesis.json; commits then count only in blocks "
                                      "whose certificate checks against its keys (a devnet's own is always used)")
    sp.add_argument("--validators", type=int, default=4)
    sp.add_argument("--p2p", choices=["direct", "gossipsub"], default="direct")
    sp.add_argument("--wearables", type=int, default=10_000)
    sp.add_argument("--phones", type=int, default=2_000)
    sp.add_argument("--seconds", type=float, default=60.0, help="how long the wearables emit (per step)")
    sp.add_argument("--window", type=float, default=10.0, help="natural windows: seconds of readings per write")
    sp.add_argument("--rate", type=float, default=0.0, help="open loop: windows per second (fleet, budget)")
    sp.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    default=[250.0, 500.0, 1000.0, 1500.0, 2000.0], help="sweep: comma-separated offered rates")
    sp.add_argument("--closed", action="store_true", help="closed loop: one write in flight per phone")
    sp.add_argument("--reads", type=float, default=0.0, help="staff reads per second (clinic default 200)")
    sp.add_argument("--read-fetch", type=float, default=1.0, help="fraction of reads whose blob is fetched")
    sp.add_argument("--grants", type=float, default=0.0, help="grant changes / revokes per second")
    sp.add_argument("--staff", type=int, default=8)
    sp.add_argument("--linger-ms", type=float, default=FleetConfig.linger_ms,
                    help="how long a proxy lane holds its first queued transaction before it posts (0: at once)")
    sp.add_argument("--check-sample", type=int, default=50, help="fleet: patients whose windows staff decrypt")
    sp.add_argument("--conn-interval", type=float, default=30.0, help="BLE connection interval, ms")
    sp.add_argument("--att-mtu", type=int, default=23)
    sp.add_argument("--ble-loss", type=float, default=0.02, help="BLE packet loss probability per attempt")
    sp.add_argument("--idle-seconds", type=float, default=3.0, help="idle baseline before the load")
    sp.add_argument("--pause", type=float, default=3.0, help="seconds between steps")
    sp.add_argument("--drain-timeout", type=float, default=300.0,
                    help="after the load: seconds to wait for every transaction to commit")
    sp.add_argument("--budget-nice", type=int, default=0,
                    help="budget: also renice the side that is pinned (a shared machine's other load competes)")
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a chain parameter of the devnet's genesis (as medchain genesis new), e.g. "
                         "block_max_txs=500 for a small machine")
    sp.add_argument("--out", help="results directory (default bench/results)")
    sp.add_argument("--memory-mb", type=float, default=None,
                    help="confine the validators to one memory cgroup of this many MiB, page cache charged, "
                         "as an edge host's RAM (needs root; the edge target is 150 with --validators 1)")
