"""GET /metrics: the service's metrics for Prometheus (events/metrics.py), rendered by
prometheus_client, for localhost or the holder of the metrics token."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from smtpeter import credentials
from smtpeter.ingress.http.routing import app, error, handled, header

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API


@app.route("/metrics", methods=["GET"])
@handled
async def metrics_page(api: API, request: Any) -> bytes:
    if not may_see(request, api.config.http.metrics_token):
        return error(request, 403, "metrics are for localhost, or for the metrics token")
    api.metrics.observe(await api.storage.queue_depth(), api.stats())
    request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode())
    return generate_latest(api.metrics.registry)


def may_see(request: Any, token: str) -> bool:
    """Localhost without proxy headers, or anyone with the metrics token (``token``; none if empty)."""
    offered = header(request, b"authorization")
    if token and offered.lower().startswith("bearer ") and credentials.equal(offered[7:].strip(), token):
        return True
    if request.getHeader(b"x-forwarded-for") or request.getHeader(b"forwarded"):
        return False  # a proxy on this host passing on someone else's request
    host = getattr(request.getClientAddress(), "host", "")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
