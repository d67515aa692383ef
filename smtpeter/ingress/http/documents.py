"""Documents served without a token: the OpenAPI description of this API (openapi.py) and
Thunderbird's autoconfig of our submission service (autoconfig.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtpeter.config import incoming_server
from smtpeter.ingress.http import autoconfig
from smtpeter.ingress.http.openapi import document
from smtpeter.ingress.http.routing import app, json_reply, query

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API


@app.route("/v1/openapi.json", methods=["GET"])
def openapi(api: API, request: Any) -> bytes:
    return json_reply(request, document(api.config.public_url))


@app.route("/.well-known/autoconfig/mail/config-v1.1.xml", methods=["GET"])
@app.route("/mail/config-v1.1.xml", methods=["GET"])
def thunderbird_autoconfig(api: API, request: Any) -> bytes:
    address = query(request, "emailaddress") or ""
    domain = address.rpartition("@")[2] if "@" in address else ""
    starttls, implicit = api.smtp_ports
    request.setHeader(b"content-type", b"application/xml; charset=utf-8")
    incoming = [incoming_server(url) for url in api.config.http.autoconfig_incoming]
    return autoconfig.config_xml(api.config.hostname, domain, implicit, starttls, incoming)
