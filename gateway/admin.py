"""The admin port's application: /metrics, /healthz, /readyz and the revocation intake.

Built once at start-up (server.py ``listeners``); its handlers run per admin request.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from . import metrics
from .revocation import intake
from .runtime import Gateway

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def admin_app(gateway: Gateway) -> web.Application:
    """Every admin route, kept off the public port: the probes, the metrics and the revocation
    intake endpoints (RFC 7009, RFC 8935 SET push; revocation/intake/endpoints.py)."""
    app = web.Application()

    async def metrics_view(_: web.Request) -> web.Response:
        body, content_type = metrics.render_latest()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, dumps=lambda o: orjson.dumps(o).decode())

    async def readyz(_: web.Request) -> web.Response:
        # a dead or stuck audit writer means requests would go unrecorded: out of rotation
        checks = {**gateway.readiness(), "audit_writer": gateway.audit.healthy()}
        ready = all(checks.values())
        return web.Response(
            status=200 if ready else 503, body=orjson.dumps({"ready": ready, **checks}),
            content_type="application/json",
        )

    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    intake.register(app, gateway)
    app[GATEWAY_KEY] = gateway
    return app
