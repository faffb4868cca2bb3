"""What `medchain bench` measures beside the load: validator processes, energy, the machine, the plot."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RAPL = Path("/sys/class/powercap")


@dataclass(frozen=True)
class PowerModel:
    """Marginal watts of one fully busy core (busy minus idle), so CPU-seconds x watts is the energy
    the work added on top of an idle machine: idle power is subtracted by construction."""

    name: str
    watts_per_busy_core: float
    source: str


POWER_MODELS = {
    # Intel ARK: Xeon Platinum 8280, 28 cores, TDP 205 W -> 7.3 W per fully loaded core. TDP is a
    # sustained-load ceiling, so this is an upper bound; the package's idle draw is not charged.
    "x86-server-core": PowerModel("x86 server core (Xeon Platinum 8280: 205 W TDP / 28 cores)", 205 / 28,
                                  "Intel ARK, Xeon Platinum 8280 TDP 205 W, 28 cores"),
    # RasPi.TV (A. Eames, 2019, "How much power does Pi4B use?"): bare board idle 540 mA = 2.7 W,
    # stress --cpu 4 1280 mA = 6.4 W at 5 V -> (6.4 - 2.7) / 4 = 0.925 W per busy Cortex-A72 core.
    "raspberry-pi-4": PowerModel("Raspberry Pi 4 B core ((6.4 W stress - 2.7 W idle) / 4 cores)", (6.4 - 2.7) / 4,
                                 "RasPi.TV 2019 measurements: idle 2.7 W, 4-core stress 6.4 W"),
}


def rapl_zones() -> list[Path]:
    """Readable RAPL package counters, or [] (this VM has no /sys/class/powercap at all)."""
    try:
        zones = [p / "energy_uj" for p in RAPL.glob("intel-rapl:*") if p.name.count(":") == 1]
        for z in zones:
            int(z.read_text())
        return zones
    except (OSError, ValueError):
        return []


def rapl_joules(zones: list[Path]) -> float:
    return sum(int(z.read_text()) for z in zones) / 1e6


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status in MiB: VmRSS (resident now), VmHWM (peak since start)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started (kernel-tracked, no sampling)."""
    return proc_status_mb(pid, "VmHWM")


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (sched_setaffinity on the pid alone moves only its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(tid), cpus)


def status(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/v1/status", timeout=10) as r:
        return json.loads(r.read())


class Validators:
    """Counters of the validators under test: CPU and peak RSS (when we have their pids), heights
    and p2p messages (from each one's /v1/status)."""

    def __init__(self, urls: list[str], pids: list[int] | None) -> None:
        self.urls, self.pids = urls, pids

    def sample(self) -> dict:
        st = [status(u) for u in self.urls]
        out = {"t": time.monotonic(), "height": max(s["height"] for s in st),
               "msgs_out": sum(s.get("p2p_messages_out", 0) for s in st), "heads": [
                   (s["height"], s["last_block_hash"], s["state_root"]) for s in st], "crypto": st[0].get("crypto"),
               "view_changes": max(s.get("consensus", {}).get("view_changes", 0) for s in st)}
        if self.pids:
            out["cpu"] = [proc_cpu_seconds(p) for p in self.pids]
            out["rss_peak_mb"] = [proc_peak_rss_mb(p) for p in self.pids]
            # what is resident now, split: the process's own memory, and the LMDB maps' (and shared
            # libraries') file pages, clean page cache the kernel reclaims under pressure
            out["rss_anon_mb"] = [proc_status_mb(p, "RssAnon") for p in self.pids]
            out["rss_file_mb"] = [proc_status_mb(p, "RssFile") for p in self.pids]
        return out

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        blocks = b["height"] - a["height"]
        # msgs_out counts every validator-to-validator send: PBFT phases, status heartbeats and the
        # forwarded transaction batches (a broadcast counts once); /v1/status has no per-type split
        d = {"blocks": blocks, "p2p_messages": b["msgs_out"] - a["msgs_out"],
             "pbft_messages_per_block": round((b["msgs_out"] - a["msgs_out"]) / blocks, 2) if blocks else None,
             "view_changes": b["view_changes"] - a["view_changes"]}
        if "cpu" in a:
            d["validator_cpu_s"] = [round(y - x, 3) for x, y in zip(a["cpu"], b["cpu"], strict=True)]
            d["validator_rss_peak_mb"] = [round(x, 1) for x in b["rss_peak_mb"]]
            d["validator_rss_anon_end_mb"] = [round(x, 1) for x in b["rss_anon_mb"]]
            d["validator_rss_file_end_mb"] = [round(x, 1) for x in b["rss_file_mb"]]
        return d


def energy(cpu_s: float, idle_cpu_per_s: float, seconds: float, committed: int, rapl_j: float | None,
           rapl_idle_w: float | None) -> dict:
    """Joules per committed transaction, by RAPL when readable, else CPU-seconds x each power model;
    idle subtracted either way (the idle validators' own CPU rate, or RAPL's idle watts)."""
    busy = max(0.0, cpu_s - idle_cpu_per_s * seconds)
    out: dict = {"validator_cpu_s": round(cpu_s, 3), "idle_cpu_s_subtracted": round(idle_cpu_per_s * seconds, 3)}
    if rapl_j is not None and rapl_idle_w is not None:
        j = max(0.0, rapl_j - rapl_idle_w * seconds)
        out["method"] = f"RAPL package energy, idle {rapl_idle_w:.1f} W subtracted"
        out["j_per_tx"] = j / committed if committed else None
        return out
    out["method"] = ("model: validator CPU-seconds (idle rate subtracted) x marginal watts per busy core; "
                     "RAPL not readable (no /sys/class/powercap)")
    out["models"] = {k: {"watts_per_busy_core": round(m.watts_per_busy_core, 3), "source": m.source,
                         "j_per_tx": busy * m.watts_per_busy_core / committed if committed else None}
                     for k, m in POWER_MODELS.items()}
    return out


def machine(argv: list[str]) -> dict:
    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[2], timeout=5).stdout.strip() != ""
    except OSError:
        rev, dirty = None, None
    return {"command": " ".join(["medchain", *argv]), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
            "kernel": platform.release(), "python": sys.version.split()[0], "git": rev, "git_dirty": dirty,
            "versions": {p: v(p) for p in ("medchain", "aiohttp", "uvloop", "coincurve", "cryptography", "lmdb",
                                           "libp2p", "msgpack", "hdrhistogram", "matplotlib")}}


def plot(report: dict, path: Path) -> None:
    """Throughput and latency against offered load (one point per step), PNG via the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [s for s in report["steps"] if s.get("committed")]
    if not steps:
        return
    if report["workload"] in ("budget", "fleet", "clinic"):
        _bars(plt, report, steps, path)
        return
    x = [s.get("offered_rate") or s["send_rate"] for s in steps]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    a1.plot(x, [s["tps"] for s in steps], "o-", label="committed tx/s (Caliper)")
    a1.plot(x, [s["send_rate"] for s in steps], "s--", alpha=0.6, label="send rate")
    a1.plot(x, x, ":", color="grey", label="offered = committed")
    a1.set_ylabel("tx/s")
    for p, mk in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        a2.plot(x, [s["latency_ms"][p] for s in steps], mk, label=p)
    a2.set_yscale("log")
    a2.set_ylabel("commit latency (ms)")
    e = [s["energy"] for s in steps]
    if all("models" in x_ for x_ in e):
        for k in e[0]["models"]:
            a3.plot(x, [x_["models"][k]["j_per_tx"] or float("nan") for x_ in e], "o-", label=k)
        a3.set_title("model: validator CPU-s (idle subtracted) x W/core", fontsize=8)
    elif all(x_.get("j_per_tx") for x_ in e):
        a3.plot(x, [x_["j_per_tx"] for x_ in e], "o-", label="RAPL")
    a3.set_yscale("log")
    a3.set_ylabel("energy per committed tx (J)")
    for ax in (a1, a2, a3):
        ax.set_xlabel("offered load (tx/s)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    _finish(plt, fig, report, path)


def _finish(plt, fig, report: dict, path: Path) -> None:
    """Title with the machine and time, then write the PNG."""
    m = report["machine"]
    fig.suptitle(f"medchain bench {report['workload']}: {report['validators']} validators, "
                 f"{m['cpus']} CPUs ({m['cpu']}), {m['time_utc']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(plt, report: dict, steps: list[dict], path: Path) -> None:
    """One bar group per step (the budget's three phases; a single fleet or clinic run)."""
    labels = [s["label"] for s in steps]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    xs = range(len(steps))
    a1.bar([x - 0.2 for x in xs], [s["send_rate"] for s in steps], 0.4, label="send rate")
    a1.bar([x + 0.2 for x in xs], [s["tps"] for s in steps], 0.4, label="committed tx/s (Caliper)")
    a1.set_ylabel("tx/s")
    for i, p in enumerate(("p50", "p95", "p99")):
        a2.bar([x + (i - 1) * 0.27 for x in xs], [s["latency_ms"][p] for s in steps], 0.27, label=p)
    a2.set_ylabel("commit latency (ms)")
    a3.bar([x - 0.2 for x in xs], [sum(s.get("validator_cpu_s", [0])) for s in steps], 0.4,
           label="validators' CPU s (sum)")
    a3.bar([x + 0.2 for x in xs], [s["generator_cpu_s"] for s in steps], 0.4, label="generator CPU s")
    a3.set_ylabel("CPU seconds in the step")
    for ax in (a1, a2, a3):
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _finish(plt, fig, report, path)
