"""Whom mx.listen takes mail for, decided per RCPT without sockets or storage.

It accepts only:

* VERP return paths (``smtpeter/verp.py``) at a bounce domain of ours whose
  MAC verifies: a bounce names the recipient it is about, and a forged one
  (a made-up or altered token) is refused at RCPT, before any data;
* our DMARC aggregate report mailboxes (``domains.dmarc_address``);
* ``postmaster`` at the domains we receive for (RFC 5321 §4.5.1).

Everything else is refused with a 5xx at RCPT: the listener never relays and
never accepts mail it would have to bounce later.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from smtpeter.storage.inbound import InboundRecipient
from smtpeter.verp import VerpSigner

Refusal = tuple[int, str, str]
NOT_OURS: Refusal = (550, "5.7.1", "Relay access denied: we receive mail only for our bounce domains")
NO_SUCH_USER: Refusal = (550, "5.1.1", "No such recipient here")


class InboundPolicy:
    def __init__(self, verp: VerpSigner, bounce_domains: Container[str], report_addresses: Iterable[str],
                 own_hosts: Iterable[str]) -> None:
        self.verp = verp
        self.bounce_domains = bounce_domains  # lower case; may change while we run
        self.report_addresses = {address.lower() for address in report_addresses}
        self.own_hosts = {host.lower() for host in own_hosts}

    def route(self, address: str) -> InboundRecipient | Refusal:
        """Where mail to ``address`` goes, or why it is refused."""
        local, at, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if not at or not local:
            return NOT_OURS
        if f"{local.lower()}@{domain}" in self.report_addresses:
            return InboundRecipient(address, "report")
        ours = domain in self.bounce_domains
        if local.lower() == "postmaster" and (ours or domain in self.own_hosts):
            return InboundRecipient(address, "postmaster")
        if not ours:
            return NOT_OURS
        recipient_id = self.verp.verify(local)
        if recipient_id is None:
            return NO_SUCH_USER
        return InboundRecipient(address, "verp", recipient_id)

    def check(self, address: str) -> Refusal | None:
        """For the SMTP session: None to accept ``address``, else the refusal."""
        found = self.route(address)
        return None if isinstance(found, InboundRecipient) else found
