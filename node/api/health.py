"""/healthz and /readyz: what a supervisor (systemd, a load balancer, Kubernetes) asks of a validator.

- /healthz: the process is alive and its event loop answers (200 while it serves at all).
- /readyz: it can do useful work: its ledger is open, it is connected to enough validators to form a
  quorum with itself, it is not more than a PBFT window behind them (catching up or in a state
  transfer, it would answer stale reads and 404 for committed transactions), consensus has not
  stopped on a storage failure, and it is not shutting down.
  503 with the failed checks otherwise, so a load balancer sends clients elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from node.api.common import validator
from node.block import quorum

routes = web.RouteTableDef()


@dataclass
class ServiceState:
    """The service's own state beside the validator's: set by node/run.py when a shutdown starts."""

    stopping: bool = False


SERVICE = web.AppKey("service", ServiceState)


@routes.get("/healthz")
async def healthz(req: web.Request) -> web.Response:
    return web.json_response({"alive": True})


@routes.get("/readyz")
async def readyz(req: web.Request) -> web.Response:
    v = validator(req)
    failed: list[str] = []
    state = req.app.get(SERVICE)
    if state is not None and state.stopping:
        failed.append("shutting down")
    try:
        height = v.ledger.head().height
    except Exception as exc:  # noqa: BLE001 - a closed or broken LMDB environment: not ready, whatever the cause
        failed.append(f"ledger unreadable: {exc}")
        height = -1
    peers = len(v.net.connected_peers()) if v.net is not None else 0
    need = quorum(v.n) - 1  # the others needed beside this validator
    if peers < need:
        failed.append(f"connected to {peers} of the {need} other validators a quorum needs")
    behind = v.replica.behind_by()  # the (f+1)-th most advanced peer's lead: no liar inflates it
    if behind > v.replica.window:
        failed.append(f"{behind} blocks behind its peers: catching up")
    disk = v.disk
    if disk.stalled or disk.panic or disk.map_full:
        failed.append(f"consensus stopped on a storage failure: {disk.stalled or disk.low or 'see /v1/status'}")
    body = {"ready": not failed, "failed": failed, "height": height, "peers": peers, "quorum_peers": need,
            "chain_id": v.chain_id, "validator_index": v.index, "genesis_hash": v.genesis.hash.hex()}
    return web.json_response(body, status=503 if failed else 200)
