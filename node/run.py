"""Run one validator: the asyncio loop on uvloop, the API, the producer.

SIGTERM and SIGINT drain and stop it in order: /readyz turns 503, the API stops listening and gives
requests in flight DRAIN_S to finish, then the validator stops its tasks, the p2p host, its worker
threads and closes the LMDB stores. Every LMDB commit is atomic and synced, so even a stop cut short
tears nothing; a second SIGINT (Ctrl-C twice) during the drain exits at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

import uvloop
from aiohttp import web

from node.api.health import SERVICE
from node.api.limits import release_freed_memory
from node.api.server import serve
from node.config import NodeSettings
from node.crypto.keys import Identity
from node.genesis import Genesis, load_checked
from node.multiaddr import split_peer, tcp_addr
from node.service import die_with_parent, sd_notify
from node.validator import Validator

log = logging.getLogger("medchain.node")
STOP_S = 15.0  # the validator's own stop (tasks, p2p, LMDB) gets this long before we give up on it


def _listening_on(gen: Genesis, index: int, listen: str | None) -> Genesis:
    """The genesis with this validator's own p2p entry pointing at `listen`: Validator.start listens
    where its genesis entry says, and a host behind NAT (or one binding 0.0.0.0) listens elsewhere than
    it advertises. Only its own entry changes; its peer id, and so every peer's view of it, stays."""
    mine = gen.validators[index]
    if not listen or not mine.p2p:  # a network of one has no p2p entry, and nothing to listen for
        return gen
    host, _, port = listen.rpartition(":")
    _, pid = split_peer(mine.p2p)
    entry = dataclasses.replace(mine, p2p=f"{tcp_addr(host, int(port))}/p2p/{pid}")
    return dataclasses.replace(gen, validators=(*gen.validators[:index], entry, *gen.validators[index + 1:]))


async def _serve_metrics(v: Validator, listen: str) -> web.AppRunner:
    """/metrics alone on its own address (e.g. 127.0.0.1 or a management network)."""
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=v.metrics.render(), content_type="text/plain")
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True).start()
    return runner


async def run_node(s: NodeSettings) -> int:
    assert s.home is not None
    # handlers first: a stop asked for while the validator recovers waits until it can stop in order
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
    home = s.home
    gen = load_checked(home / "genesis.json")
    index = gen.index_of(Identity.load(home / "node_key.json").public_key)
    host, _, port = gen.validators[index].api.rpartition(":")
    host, port_n = s.api_host or host, s.api_port if s.api_port is not None else int(port)
    v = Validator(home, genesis=_listening_on(gen, index, s.p2p_listen), p2p_mode=s.p2p_mode,
                  ipfs_peers=s.ipfs_peers, network=gen.network, p2p_gate=s.p2p_gate)
    await v.start()
    v.genesis = gen  # started (listening where told): from now on it serves the genesis as it is
    extra: list[web.AppRunner] = []
    try:
        runner = await serve(v, host, port_n)
        if s.metrics_listen:
            v.metrics.bind(v)
            extra.append(await _serve_metrics(v, s.metrics_listen))
    except OSError as exc:  # a port is taken: stop what started, then say so
        await v.stop()
        raise OSError(exc.errno, f"cannot listen ({exc.strerror}): API {host}:{port_n}"
                      f"{', metrics ' + s.metrics_listen if s.metrics_listen else ''}") from None
    addr = f"http://{host}:{port_n}"
    log.info("validator %d serving %s", v.index, addr)
    if s.ready_file:
        Path(s.ready_file).write_text(addr + "\n")
    sd_notify(f"READY=1\nSTATUS=validator {v.index} serving {addr}")
    await stop.wait()
    t0 = time.monotonic()
    sd_notify("STOPPING=1")
    runner.app[SERVICE].stopping = True
    for r in (runner, *extra):
        await r.cleanup()  # stop listening, drain requests in flight (DRAIN_S at most)
    try:
        await asyncio.wait_for(v.stop(), STOP_S)
    except TimeoutError:  # a thread that would not finish could keep the process alive: leave for certain
        log.error("validator did not stop within %.0f s; exiting anyway (LMDB commits are atomic)", STOP_S)
        logging.shutdown()
        os._exit(1)
    log.info("stopped cleanly in %.1f s", time.monotonic() - t0)
    return 0


def main(s: NodeSettings) -> int:
    die_with_parent()
    release_freed_memory()
    return uvloop.run(run_node(s))
