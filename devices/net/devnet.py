"""`medchain devnet`: a local network, each validator its own process, supervised until a signal.

- SIGTERM, SIGINT and SIGHUP stop every validator (all signalled at once, then waited for, SIGKILL
  after a grace) and remove the temporary homes; a second signal does not cut that short.
- Each validator is started with PR_SET_PDEATHSIG (node/service.py), so a devnet killed with
  SIGKILL, which can run no code, still takes its validators with it.
- Before anything starts, every API and libp2p port is checked free; once started, each API must
  answer as the validator this devnet made (its chain id and index), or the devnet stops, says why
  and exits 1. A validator that dies while the devnet runs also stops it with exit 1.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from devices.net.localnet import NodeProcess, make_network, start_all, stop_all
from node.genesis import Genesis
from node.multiaddr import host_port
from node.service import busy_ports, ignore_signals

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_S = 0.25


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    old = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _ports(nodes: list[NodeProcess]) -> list[tuple[str, int, str]]:
    gen = Genesis.load(nodes[0].home / "genesis.json")
    out = []
    for i, v in enumerate(gen.validators):
        host, port = v.api.rsplit(":", 1)
        out.append((host, int(port), f"validator {i} API"))
        if v.p2p:
            out.append((*host_port(v.p2p), f"validator {i} libp2p"))
    return out


def _err(msg: str) -> None:
    print(f"medchain devnet: {msg}", file=sys.stderr, flush=True)


def run(validators: int, home: Path | None, p2p_mode: str, base_port: int, private_network: bool,
        as_json: bool) -> int:
    """Run the devnet until a stop signal: 0 after a signal, 1 if a validator fails or a port is taken."""
    with tempfile.TemporaryDirectory(prefix="medchain-devnet-") as tmp, _stop_on_signals():
        nodes: list[NodeProcess] = []
        try:
            nodes = make_network(home or Path(tmp), validators, p2p_mode=p2p_mode, base_port=base_port,
                                 private_network=private_network)
            busy = busy_ports(_ports(nodes))
            if busy:
                _err("; ".join(busy) + " (stop what holds it, or pick other ports with --base-port, 0 for free ones)")
                return 1
            for n in nodes:
                n.die_with_parent = True
            try:
                start_all(nodes)
            except (RuntimeError, TimeoutError) as exc:
                _err(f"a validator failed to start: {exc}")
                return 1
            listing = [{"index": i, "api": n.url, "home": str(n.home), "pid": n.proc.pid if n.proc else None}
                       for i, n in enumerate(nodes)]
            print(json.dumps({"validators": listing, "chain_id": nodes[0].chain_id}, indent=1) if as_json else
                  "\n".join(f"validator {i}: {n.url}  (home {n.home})" for i, n in enumerate(nodes))
                  + "\nCtrl-C to stop", flush=True)
            while True:
                for i, n in enumerate(nodes):
                    if n.proc is not None and n.proc.poll() is not None:
                        _err(f"validator {i} exited with {n.proc.returncode}: {n.log_tail(600)}")
                        return 1
                time.sleep(POLL_S)
        except _Stop:
            return 0
        finally:
            ignore_signals(*STOP_SIGNALS)  # the cleanup below must run to its end
            stop_all(nodes)
