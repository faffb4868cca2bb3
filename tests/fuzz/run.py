"""Coverage-guided fuzzing with atheris (libFuzzer): `python -m tests.fuzz.run TARGET [libFuzzer flags]`.

TARGET is one of wire, tx, block, consensus, gatt, http. The valid seeds of tests/fuzz/targets.py
and the saved regressions (tests/fuzz/regressions/TARGET/) form the starting corpus, unless a corpus
directory is passed. `make fuzz` runs every target for FUZZ_SECONDS each; `make test` runs each for
a few seconds (tests/fuzz/test_fuzz.py). A crash leaves `crash-<sha1>` under -artifact_prefix:
copy it into regressions/TARGET/ so the replay test keeps it fixed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
NAMES = ("wire", "tx", "block", "consensus", "gatt", "http")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in NAMES:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(NAMES)}}} [libFuzzer flags]")
    name, flags = argv[1], argv[2:]
    with atheris.instrument_imports(include=["node", "devices", "tests.fuzz"]):
        from tests.fuzz import targets
        if name == "http":
            from tests.fuzz.http_target import HttpHarness
    if name == "http":
        harness = HttpHarness()
        target = harness.request
        seeds: list[bytes] = [bytes([i, 0]) for i in range(16)] + [bytes([3, 250])]
    else:
        target = targets.TARGETS[name]
        seeds = targets.seeds()[name]

    def one(data: bytes) -> None:
        target(data)

    corpus_dirs = [f for f in flags if not f.startswith("-")]
    if not corpus_dirs:  # a fresh corpus of the valid seeds and the saved regressions
        tmp = Path(tempfile.mkdtemp(prefix=f"medchain-fuzz-{name}-"))
        for i, s in enumerate(seeds):
            (tmp / f"seed{i}").write_bytes(s)
        reg = REGRESSIONS / name
        for f in sorted(reg.glob("*")) if reg.is_dir() else []:
            (tmp / f"reg-{f.name}").write_bytes(f.read_bytes())
        flags.append(str(tmp))
    atheris.Setup([argv[0], *flags], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
