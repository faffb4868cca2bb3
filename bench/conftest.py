"""Collects per-item rates from the crypto benchmarks and prints native/baseline ratios at the end.

pytest-benchmark's own table shows seconds per round (one round = one batch); the summary below
divides by the batch size and compares every case in a group against that group's baseline, so
the ratios the issue asks for can be read off one run.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import pytest


@dataclass
class Case:
    group: str
    name: str
    items: int
    median: float  # seconds per round
    mean: float
    rounds: int
    baseline: bool
    fallback: bool


RESULTS: list[Case] = []
PAIRED: list[tuple[str, list[float]]] = []  # (label, per-pair speed ratios)


class Recorder:
    """`bench(benchmark, fn, items=N, baseline=..., fallback=...)`: run fn under pytest-benchmark.

    baseline: the case every other case in the group is compared with (the first ratio column);
    fallback: the pure-Python fallback of node/crypto/batch.py (the second ratio column).
    """

    def __call__(self, benchmark, fn, *, items: int, baseline: bool = False, fallback: bool = False):
        benchmark.extra_info["items_per_round"] = items
        result = benchmark(fn)
        meta = benchmark.stats
        if meta is not None and getattr(meta, "stats", None) is not None and meta.stats.rounds:
            s = meta.stats
            RESULTS.append(Case(benchmark.group or "", benchmark.name, items, s.median, s.mean, s.rounds,
                                baseline, fallback))
        return result


@pytest.fixture
def bench() -> Recorder:
    return Recorder()


class PairedRecorder:
    """`paired(benchmark, label, fast, slow, rounds)`: time fast() and slow() back to back, alternating
    which goes first, and record slow_time / fast_time per pair. On a VM where other jobs come
    and go, the median of these paired ratios is steadier than a ratio of two separate runs."""

    def __call__(self, benchmark, label: str, fast, slow, *, rounds: int) -> list[float]:
        ratios: list[float] = []

        def one_pair(i=[0]):  # noqa: B006 - a counter shared across rounds on purpose
            first, second = (fast, slow) if i[0] % 2 == 0 else (slow, fast)
            i[0] += 1
            t0 = time.perf_counter()
            first()
            t1 = time.perf_counter()
            second()
            t2 = time.perf_counter()
            tf, ts = ((t1 - t0), (t2 - t1)) if first is fast else ((t2 - t1), (t1 - t0))
            ratios.append(ts / tf)

        benchmark.pedantic(one_pair, rounds=rounds, iterations=1, warmup_rounds=1)
        ratios = ratios[1:]  # the warm-up pair
        PAIRED.append((label, ratios))
        return ratios


@pytest.fixture
def paired() -> PairedRecorder:
    return PairedRecorder()


def _rate(x: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:7.2f}{unit}/s"
    return f"{x:7.0f} /s"


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy CPU seconds, this process's CPU seconds, wall clock) or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()


_START: tuple[float, float, float] | None = None


def pytest_sessionstart(session):
    global _START
    _START = _cpu_snapshot()


def _other_load_line() -> str:
    end = _cpu_snapshot()
    if _START is None or end is None:
        return ""
    wall = end[2] - _START[2]
    others = (end[0] - _START[0]) - (end[1] - _START[1])
    cpus = os.cpu_count() or 1
    share = max(0.0, others) / (wall * cpus) if wall > 0 else 0.0
    note = "  (noisy: the multi-core figures are unreliable)" if share > 0.10 else ""
    return f"other processes used {share:.0%} of the {cpus} CPUs during this {wall:.0f} s run{note}"


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter):
    if not RESULTS and not PAIRED:
        return
    tr = terminalreporter
    load = _other_load_line()
    if load:
        tr.section("medchain crypto: machine load")
        tr.write_line(load)
    if PAIRED:
        tr.section("medchain crypto: paired ratios (A and B timed back to back, alternating order)")
        for label, ratios in PAIRED:
            q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
            tr.write_line(f"  {label:<72} median {statistics.median(ratios):7.2f}x"
                          f"  (quartiles {q[0]:.2f}-{q[2]:.2f}, {len(ratios)} pairs)")
    tr.section("medchain crypto: items/s from the median round; x = speed relative to the named case")
    groups: dict[str, list[Case]] = {}
    for c in RESULTS:
        groups.setdefault(c.group, []).append(c)
    for group, cases in groups.items():
        base = next((c for c in cases if c.baseline), None)
        fb = next((c for c in cases if c.fallback), None)
        head = f"{group}   (vs baseline: {base.name if base else '-'}; vs fallback: {fb.name if fb else '-'})"
        tr.write_line(head)
        for c in cases:
            per_item = c.median / c.items
            vs_base = f"{(base.median / base.items) / per_item:8.2f}x" if base else " " * 9
            vs_fb = f"{(fb.median / fb.items) / per_item:7.2f}x" if fb else " " * 8
            tr.write_line(f"  {c.name:<52} {_rate(c.items / c.median)}  vs baseline {vs_base}"
                          f"  vs fallback {vs_fb}  [{c.rounds} rounds of {c.items}]")
