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

Only a recipient's clicks matter to the two rules that look beyond the hit
(honeypot, burst): ``ClickWindow`` holds them indexed for exactly those two
questions, so scoring a hit costs the same however many times its recipient
clicked.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

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

AGENT_VERDICTS = 4096  # user agents whose verdict is remembered (a few browsers make most hits)
_CACHED_AGENT_LENGTH = 512  # longer ones are matched every time: no one fills the cache with junk


class Seen(NamedTuple):
    """What the rules look at of one hit."""

    time: float
    kind: str  # "click" or "open"
    position: int
    method: str
    ip: str
    user_agent: str


class ClickWindow:
    """One recipient's clicks, indexed for the honeypot and burst rules.

    The honeypot rule asks for a click on the hidden link from one address
    within HONEYPOT_SECONDS: those clicks are few, kept as a tuple. The burst
    rule asks for a click on another link within BURST_SECONDS: the clicks are
    kept per BURST_SECONDS-wide slot of time and per link as the first and last
    time in it, as only the one nearest in time to a hit can be near enough
    (a slot is narrower than the two-sided window, so between its first and
    last click there is no gap it could hide in). A hit's own click may be in
    the window: neither rule can match a click with itself.

    Everything in it is a tuple of numbers and strings, replaced rather than
    changed: the garbage collector stops tracking those at once, so the
    thousands made a second cost it nothing (a dict per slot would live to its
    full collections, tens of milliseconds each with the reactor stopped).
    """

    __slots__ = ("_honeypots", "_slots", "latest")

    def __init__(self) -> None:
        self._honeypots: tuple[tuple[float, str], ...] = ()  # (time, ip) of clicks on the hidden link
        self._slots: dict[int, tuple[_Span, ...]] = {}  # slot -> one span per link clicked in it
        self.latest = -math.inf  # the newest click's time

    def add(self, time: float, position: int, ip: str) -> None:
        if position == HONEYPOT_POSITION:
            self._honeypots += ((time, ip),)
        key = _slot(time)
        spans = self._slots.get(key)
        if spans is None:
            self._slots[key] = ((position, time, time),)
        else:
            for index, (other, first, last) in enumerate(spans):
                if other == position:
                    if not first <= time <= last:
                        self._slots[key] = (*spans[:index], (position, min(first, time), max(last, time)),
                                            *spans[index + 1:])
                    break
            else:
                self._slots[key] = (*spans, (position, time, time))
        if time > self.latest:
            self.latest = time

    def honeypot_near(self, time: float, ip: str) -> bool:
        """Whether the hidden link was clicked from ``ip`` within HONEYPOT_SECONDS of ``time``."""
        for other, other_ip in self._honeypots:  # none, nearly always
            if other_ip == ip and abs(other - time) <= HONEYPOT_SECONDS:
                return True
        return False

    def other_link_near(self, time: float, position: int) -> bool:
        """Whether a link other than ``position`` was clicked less than BURST_SECONDS from ``time``."""
        middle = _slot(time)
        for key in range(middle - 1, middle + 2):
            for other, first, last in self._slots.get(key, ()):
                if other != position and (abs(first - time) < BURST_SECONDS
                                          or abs(last - time) < BURST_SECONDS):
                    return True
        return False

    def forget_before(self, time: float) -> None:
        """Drop what no hit at ``time`` or later can be near (slots go oldest first, as they came)."""
        oldest_kept = _slot(time - BURST_SECONDS)
        slots = self._slots
        while slots:
            first = next(iter(slots))
            if first >= oldest_kept:
                break
            del slots[first]
        if self._honeypots and self._honeypots[0][0] < time - HONEYPOT_SECONDS:
            self._honeypots = tuple((t, ip) for t, ip in self._honeypots if t >= time - HONEYPOT_SECONDS)

    @classmethod
    def of(cls, hits: Iterable[Seen]) -> ClickWindow:
        """A window of the clicks among ``hits``."""
        window = cls()
        for hit in hits:
            if hit.kind == "click":
                window.add(hit.time, hit.position, hit.ip)
        return window


_Span = tuple[int, float, float]  # a link's position, its first and last click in a slot


def _slot(time: float) -> int:
    return math.floor(time / BURST_SECONDS)


class BotRules:
    def __init__(self, user_agents: Iterable[str] = (), seconds: float = 5.0) -> None:
        """``user_agents``: more expressions on top of USER_AGENTS; ``seconds``: how soon after the
        delivery a hit is a machine's."""
        self._agents = re.compile("|".join(f"(?:{p})" for p in (*USER_AGENTS, *user_agents)), re.I)
        # One big case-insensitive alternation costs tens of microseconds a search: remembered.
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        self.seconds = seconds

    def is_machine_agent(self, user_agent: str) -> bool:
        verdict = self._verdicts.get(user_agent)
        if verdict is not None:
            self._verdicts.move_to_end(user_agent)
            return verdict
        verdict = self._agents.search(user_agent.strip()) is not None
        if len(user_agent) <= _CACHED_AGENT_LENGTH:
            self._verdicts[user_agent] = verdict
            if len(self._verdicts) > AGENT_VERDICTS:
                self._verdicts.popitem(last=False)
        return verdict

    def reason(self, hit: Seen, delivered: float | None, clicks: ClickWindow) -> str:
        """Why ``hit`` is a machine's (one of the reasons above), or "" for a person's.

        ``delivered``: when the message reached the recipient's server (None: not yet known);
        ``clicks``: the recipient's clicks around it (``ClickWindow.of`` makes one of a list).
        """
        if hit.kind == "click":
            if hit.position == HONEYPOT_POSITION or clicks.honeypot_near(hit.time, hit.ip):
                return HONEYPOT
        if hit.method == "HEAD":
            return HEAD
        if self.is_machine_agent(hit.user_agent):
            return USER_AGENT
        if delivered is None or hit.time - delivered < self.seconds:
            return EARLY
        if hit.kind == "click" and clicks.other_link_near(hit.time, hit.position):
            return BURST
        return ""
