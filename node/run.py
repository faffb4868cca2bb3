"""Run one validator: the asyncio loop on uvloop, the API, the producer; SIGTERM/SIGINT stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import uvloop

from node.api.limits import release_freed_memory
from node.api.server import serve
from node.validator import Validator

log = logging.getLogger("medchain.node")


async def run_node(home: Path, host: str, port: int, ready_file: Path | None = None,
                   ipfs_peers: list[str] | None = None) -> None:
    v = Validator(home, p2p_mode=os.environ.get("MEDCHAIN_P2P_MODE", "direct"), ipfs_peers=ipfs_peers)
    await v.start()
    runner = await serve(v, host, port)
    addr = f"http://{host}:{port}"
    log.info("validator %d serving %s", v.index, addr)
    if ready_file:
        ready_file.write_text(addr + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    await v.stop()


def main(home: Path, host: str, port: int, ready_file: Path | None = None,
         ipfs_peers: list[str] | None = None) -> None:
    release_freed_memory()
    uvloop.run(run_node(home, host, port, ready_file, ipfs_peers))
