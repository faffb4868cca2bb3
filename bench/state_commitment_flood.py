"""`medchain loadtest --kind profile` flood with and without the authenticated state tree, in one run.

"Without" is the code of a git revision from before the tree (default 40ba3bc, the hash-chain
state root), extracted with `git archive` into a temporary directory and put first on PYTHONPATH
(the native .so files are copied from this checkout: their sources did not change). The two are
run alternately, `--pairs` times each; validator CPU per committed transaction is the figure to
compare (throughput on this shared 2-core VM is noisy).

    .venv/bin/python bench/state_commitment_flood.py [--rev 40ba3bc] [--pairs 3] [--validators 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(pythonpath: Path, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-m", "node.cli", "loadtest", "--kind", "profile", "--json",
                          "--validators", str(args.validators), "--senders", str(args.senders),
                          "--per-sender", str(args.per_sender)],
                         env={**os.environ, "PYTHONPATH": str(pythonpath)}, cwd=tempfile.gettempdir(),
                         capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="40ba3bc", help="a revision without the state tree")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--validators", type=int, default=1)
    ap.add_argument("--senders", type=int, default=200)
    ap.add_argument("--per-sender", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        tar = Path(tmp) / "base.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), args.rev], check=True)
        with tarfile.open(tar) as t:
            t.extractall(base, filter="data")
        for so in (ROOT / "native").glob("_[sa]*.so"):
            if not so.name.startswith("_smt"):
                shutil.copy(so, base / "native")
        res: dict[str, list[dict]] = {"without tree": [], "with tree": []}
        for i in range(args.pairs):
            order = [("without tree", base), ("with tree", ROOT)]
            for name, path in order if i % 2 == 0 else order[::-1]:
                res[name].append(run(path, args))
    n = args.senders * args.per_sender
    print(f"profile flood, {args.validators} validator(s), {n} transactions per run, {args.pairs} runs each:")
    for name, runs in res.items():
        cpu = [sum(r["validator_cpu_s"]) / len(r["validator_cpu_s"]) / r["committed"] * 1e6 for r in runs]
        tps = [r["tps"] for r in runs]
        print(f"  {name:13} {statistics.median(tps):8.0f} tx/s (median; {', '.join(f'{t:.0f}' for t in tps)})"
              f"   validator CPU {statistics.median(cpu):6.1f} us/tx (median; {', '.join(f'{c:.1f}' for c in cpu)})")


if __name__ == "__main__":
    main()
