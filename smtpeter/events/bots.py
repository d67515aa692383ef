"""Machines that click and open: which hits on tracking links a person did not make.

Security scanners follow every link of a message as it arrives, and image
proxies (Apple Mail Privacy Protection, Gmail, Yahoo) load every image. Each
click and open event says ``bot: true/false`` and, for a bot, the first rule
that caught it (``bot_reason``):

* ``honeypot``: the hidden link every tracked HTML part carries (first in the
  body, so a scanner that follows links in order meets it first), and every
  other click of the same recipient from the same address within
  ``HONEYPOT_SECONDS`` of it;
* ``head``: a HEAD request (a scanner checking where a link goes; browsers GET);
* ``user_agent``: a known scanner, crawler, link previewer or image proxy
  (``USER_AGENTS`` plus ``tracking.bot_user_agents``);
* ``early``: within ``tracking.bot_seconds`` of the delivery (no person reads
  that fast), or before we know the message was delivered at all;
* ``burst``: two different links of one message clicked within
  ``BURST_SECONDS`` of each other (a person goes back to the mail between two
  clicks; a scanner does not).

The hit itself is kept in the event (method, address, headers, time), so a
better rule can score old events again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smtpeter.links import MAX_POSITION

HONEYPOT, HEAD, USER_AGENT, EARLY, BURST = "honeypot", "head", "user_agent", "early", "burst"
HONEYPOT_POSITION = MAX_POSITION  # the position of the hidden link in its message
HONEYPOT_SECONDS = 60.0
BURST_SECONDS = 1.0

# Case-insensitive regular expressions for user agents that are machines.
USER_AGENTS: tuple[str, ...] = (
    # Image proxies that load every image of a message, read or not.
    r"GoogleImageProxy", r"YahooMailProxy", r"^Mozilla/5\.0$",  # the last: Apple Mail Privacy Protection
    # Link scanners of mail security gateways.
    r"Barracuda", r"Mimecast", r"Proofpoint", r"urldefense", r"MessageLabs", r"Symantec", r"Forcepoint",
    r"Sophos", r"FireEye", r"IronPort", r"Cisco", r"SpamTitan", r"Forti(?:net|Guard)", r"Hornetsecurity",
    r"Trend ?Micro", r"Zscaler", r"Avanan", r"Check ?Point", r"Safe ?Links",
    # Crawlers, link previews and HTTP libraries.
    r"bot[/;)\-]|\bbot\b|bot$|crawler|spider|slurp", r"BingPreview", r"facebookexternalhit", r"WhatsApp",
    r"SkypeUriPreview", r"Embedly", r"HeadlessChrome", r"PhantomJS", r"python-requests", r"python-urllib",
    r"aiohttp", r"^curl/", r"^Wget", r"Go-http-client", r"okhttp", r"libwww-perl", r"^Java/",
    r"Apache-HttpClient", r"node-fetch", r"axios/", r"Scrapy", r"^$",
)


@dataclass(frozen=True)
class Seen:
    """What the rules look at of one hit."""

    time: float
    kind: str  # "click" or "open"
    position: int
    method: str
    ip: str
    user_agent: str


class BotRules:
    def __init__(self, user_agents: Iterable[str] = (), seconds: float = 5.0) -> None:
        """``user_agents``: more expressions on top of USER_AGENTS; ``seconds``: how soon after the
        delivery a hit is a machine's."""
        self._agents = re.compile("|".join(f"(?:{p})" for p in (*USER_AGENTS, *user_agents)), re.I)
        self.seconds = seconds

    def is_machine_agent(self, user_agent: str) -> bool:
        return self._agents.search(user_agent.strip()) is not None

    def reason(self, hit: Seen, delivered: float | None, others: Sequence[Seen]) -> str:
        """Why ``hit`` is a machine's (one of the reasons above), or "" for a person's.

        ``delivered``: when the message reached the recipient's server (None: not yet known);
        ``others``: the recipient's other hits around it, in any order.
        """
        if hit.kind == "click":
            if hit.position == HONEYPOT_POSITION or any(
                    o.kind == "click" and o.position == HONEYPOT_POSITION and o.ip == hit.ip
                    and abs(o.time - hit.time) <= HONEYPOT_SECONDS for o in others):
                return HONEYPOT
        if hit.method == "HEAD":
            return HEAD
        if self.is_machine_agent(hit.user_agent):
            return USER_AGENT
        if delivered is None or hit.time - delivered < self.seconds:
            return EARLY
        if hit.kind == "click" and any(
                o.kind == "click" and o.position != hit.position and abs(o.time - hit.time) < BURST_SECONDS
                for o in others):
            return BURST
        return ""
