"""Mozilla autoconfig (config-v1.1.xml): Thunderbird finds our submission service by itself.

Thunderbird asks ``/.well-known/autoconfig/mail/config-v1.1.xml`` (and
``/mail/config-v1.1.xml``) on the mail domain with ``?emailaddress=``. We
describe our SMTP submission, and the incoming servers the operator names in
``http.autoconfig_incoming`` (Thunderbird will not set up an account without
one; we are not a mailbox server). The login name is the address, so SMTP
logins meant for Thunderbird users are best named after their address.
"""

from __future__ import annotations

from xml.sax.saxutils import escape


def _server(element: str, kind: str, host: str, port: int, socket_type: str) -> str:
    return f"""    <{element} type="{kind}">
      <hostname>{escape(host)}</hostname>
      <port>{port}</port>
      <socketType>{socket_type}</socketType>
      <authentication>password-cleartext</authentication>
      <username>%EMAILADDRESS%</username>
    </{element}>
"""


def config_xml(hostname: str, domain: str, implicit_tls_ports: list[int], starttls_ports: list[int],
               incoming: list[tuple[str, str, int, str]] = ()) -> bytes:
    """``incoming``: (type, hostname, port, socket type) of each incoming server."""
    servers = [_server("incomingServer", *server) for server in incoming]
    servers += [_server("outgoingServer", "smtp", hostname, port, "SSL") for port in implicit_tls_ports]
    servers += [_server("outgoingServer", "smtp", hostname, port, "STARTTLS") for port in starttls_ports]
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="{escape(hostname, {'"': "&quot;"})}">
    <domain>{escape(domain or hostname)}</domain>
    <displayName>smtpeter ({escape(hostname)})</displayName>
    <displayShortName>smtpeter</displayShortName>
{"".join(servers)}  </emailProvider>
</clientConfig>
""".encode()
