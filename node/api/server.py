"""The validator's HTTP API: the aiohttp application (its middlewares, in order: metrics per route,
the per-client-IP request rate, the body and connection limits of node/api/limits.py) and the
server. The routes are plain functions in their modules:

- node/api/submit.py: POST /v1/tx, /v1/txs
- node/api/chain.py: /v1/status, /v1/genesis, /v1/tx/{id}, /v1/blocks/{height}, POST /v1/proofs, /metrics
- node/api/blobs.py: POST /v1/blobs, GET /v1/blobs/{cid}
- node/api/patients.py: /v1/accounts/{addr}, /v1/patients/{addr}/audit|grants|keys/{staff}|data
- node/api/health.py: /healthz, /readyz

Every refusal is a 4xx (or 5xx) with a JSON {"error": reason}; HTTP statuses live in node/api only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from node.api import blobs, chain, health, patients, submit
from node.api.common import LIMITS, SEEN, VALIDATOR, SeenRequests, err, retry_after
from node.api.limits import Limits, cap_connections, client_ip, serve_kwargs
from node.api.submit import MAX_BATCH_TXS
from node.mempool import KeyedLimiter
from node.storage import StorageFull
from node.validator import Validator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTE_MODULES = (chain, submit, blobs, patients, health)  # each holds `routes`, a RouteTableDef


def make_app(v: Validator) -> web.Application:
    v.metrics.bind(v)
    app = web.Application(client_max_size=v.params.max_blob_bytes + 4096)
    app[VALIDATOR] = v
    app[SEEN] = SeenRequests(2 * v.params.request_skew_ms / 1000)
    app[health.SERVICE] = health.ServiceState()

    @web.middleware
    async def count(req: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(req)
        route = req.match_info.route.resource.canonical if req.match_info.route.resource else "unmatched"
        v.metrics.http.labels(route, str(resp.status)).inc()
        return resp

    clients = KeyedLimiter(v.params.client_rate, v.params.client_burst)

    @web.middleware
    async def per_client(req: web.Request, handler: Handler) -> web.StreamResponse:
        """The per-connection limit: a token bucket per client IP over all requests, so one host
        cannot monopolise the API (per-sender limits apply to transactions on top)."""
        ip = client_ip(req)
        wait = clients.take(ip, time.monotonic())
        if wait > 0:
            v.metrics.throttled.labels("client_ip").inc()
            return err(429, f"rate limited: client {ip} exceeds {v.params.client_rate:g} requests/s",
                       {"Retry-After": retry_after(wait)})
        return await handler(req)

    limits = app[LIMITS] = Limits(v.params, lambda scope: v.metrics.throttled.labels(scope).inc(), MAX_BATCH_TXS,
                                  v.mempool.origin_full)

    @web.middleware
    async def storage_full(req: web.Request, handler: Handler) -> web.StreamResponse:
        """The one place a full disk becomes HTTP: 507 Insufficient Storage, with Retry-After."""
        try:
            return await handler(req)
        except StorageFull as exc:
            return err(507, exc.reason, {"Retry-After": retry_after(exc.retry_after)})

    app.middlewares.extend([count, per_client, limits.middleware, storage_full])
    for module in ROUTE_MODULES:
        app.add_routes(module.routes)
    return app


DRAIN_S = 3.0  # at shutdown, requests in flight (long polls included) get this long to finish


async def serve(v: Validator, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(v), access_log=None, shutdown_timeout=DRAIN_S, **serve_kwargs(v.params))
    await runner.setup()
    cap_connections(runner.server, v.params.client_max_conns, v.metrics.throttled.labels("connections").inc)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
