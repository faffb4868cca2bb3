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
import sys
import tempfile
import time
from pathlib import Path

from devices.net.localnet import NodeProcess, PortsTaken, Stopped, make_network, supervised

POLL_S = 0.25


def _err(msg: str) -> None:
    print(f"medchain devnet: {msg}", file=sys.stderr, flush=True)


def run(validators: int, home: Path | None, p2p_mode: str, base_port: int, private_network: bool,
        as_json: bool) -> int:
    """Run the devnet until a stop signal: 0 after a signal, 1 if a validator fails or a port is taken."""
    with tempfile.TemporaryDirectory(prefix="medchain-devnet-") as tmp:
        nodes: list[NodeProcess] = []
        try:
            nodes = make_network(home or Path(tmp), validators, p2p_mode=p2p_mode, base_port=base_port,
                                 private_network=private_network)
            with supervised(nodes):
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
        except Stopped:
            return 0
        except PortsTaken as exc:
            _err(f"{exc} (stop what holds it, or pick other ports with --base-port, 0 for free ones)")
            return 1
        except (RuntimeError, TimeoutError) as exc:  # start_all: one did not come up (all are stopped)
            _err(f"a validator failed to start: {exc}")
            return 1
