"""Run one validator: the asyncio loop on uvloop, the API, the producer.

SIGTERM and SIGINT drain and stop it in order: /readyz turns 503, the API stops listening and gives
requests in flight DRAIN_S to finish, then the validator stops its tasks, the p2p host, its worker
threads and closes the LMDB stores. Every LMDB commit is atomic and synced, so even a stop cut short
tears nothing; a second SIGINT (Ctrl-C twice) during the drain exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import uvloop

from node.api.health import SERVICE
from node.api.limits import release_freed_memory
from node.api.server import serve
from node.genesis import load_checked
from node.service import die_with_parent
from node.validator import Validator

log = logging.getLogger("medchain.node")
STOP_S = 15.0  # the validator's own stop (tasks, p2p, LMDB) gets this long before we give up on it


async def run_node(home: Path, host: str, port: int, ready_file: Path | None = None,
                   ipfs_peers: list[str] | None = None) -> int:
    v = Validator(home, genesis=load_checked(home / "genesis.json"),
                  p2p_mode=os.environ.get("MEDCHAIN_P2P_MODE", "direct"), ipfs_peers=ipfs_peers)
    await v.start()
    try:
        runner = await serve(v, host, port)
    except OSError as exc:  # the API port is taken: stop what started, then say so
        await v.stop()
        raise OSError(exc.errno, f"cannot serve the API on {host}:{port}: {exc.strerror}") from None
    addr = f"http://{host}:{port}"
    log.info("validator %d serving %s", v.index, addr)
    if ready_file:
        ready_file.write_text(addr + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            if sig == signal.SIGINT:  # Ctrl-C twice: the operator wants out now
                log.warning("SIGINT during shutdown: exiting now (LMDB commits are atomic)")
                os._exit(128 + sig)
            return
        log.info("%s: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    t0 = time.monotonic()
    runner.app[SERVICE].stopping = True
    await runner.cleanup()  # stop listening, drain requests in flight (DRAIN_S at most)
    try:
        await asyncio.wait_for(v.stop(), STOP_S)
    except TimeoutError:
        log.error("validator did not stop within %.0f s; exiting anyway", STOP_S)
        return 1
    log.info("stopped cleanly in %.1f s", time.monotonic() - t0)
    return 0


def main(home: Path, host: str, port: int, ready_file: Path | None = None,
         ipfs_peers: list[str] | None = None) -> int:
    die_with_parent()
    release_freed_memory()
    return uvloop.run(run_node(home, host, port, ready_file, ipfs_peers))
