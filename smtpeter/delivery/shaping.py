"""Traffic shaping: profiles per kind of destination, backoff rules, rate limits.

What a destination may do: concurrent connections, new connections and
messages per minute, messages per connection, idle time, TLS policy, and
the reply patterns that pause or slow it. Shipped profiles for the big
providers; operators override them field by field in ``[delivery.profiles.*]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet import defer

from smtpeter.config import BackoffRule, DeliveryConfig, Profile

_RATE_LIMITED = BackoffRule(
    pattern=(r"temporarily rate limited|Messages from \d+\.\d+\.\d+\.\d+ temporarily deferred"
             r"|Server busy\. Please try again later"),
    messages_per_minute=1, max_connections=1, duration=5400,
)

SHIPPED_PROFILES: dict[str, Profile] = {
    # KumoMTA's published shaping defaults are the model.
    "default": Profile(
        max_connections=10, max_messages_per_connection=100, messages_per_minute=6000,
        connections_per_minute=100, idle_timeout=60, tls="opportunistic", backoff=[_RATE_LIMITED],
    ),
    "gmail": Profile(mx_suffixes=[".google.com", ".googlemail.com"], max_connections=5,
                     max_messages_per_connection=50, tls="required"),
    "yahoo": Profile(mx_suffixes=[".yahoodns.net"], max_messages_per_connection=20,
                     backoff=[BackoffRule(pattern=r"\[TS?S0[1-4]\]", pause=7200)]),
    "outlook": Profile(
        mx_suffixes=[".olc.protection.outlook.com", ".mail.protection.outlook.com", ".mx.microsoft"],
        max_connections=5, max_messages_per_connection=50, tls="required",
    ),
}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    pause: float
    messages_per_minute: float
    max_connections: int
    duration: float


@dataclass(frozen=True)
class Shaping:
    """A profile with every value filled in."""

    name: str
    max_connections: int
    max_messages_per_connection: int
    messages_per_minute: float
    connections_per_minute: float
    idle_timeout: float
    tls: str
    rules: tuple[Rule, ...]


def profiles(config: DeliveryConfig) -> dict[str, Profile]:
    """Shipped profiles with the operator's TOML overrides merged in, field by field."""
    merged = dict(SHIPPED_PROFILES)
    for name, override in config.profiles.items():
        base = merged.get(name, Profile())
        changes = {f.name: getattr(override, f.name) for f in fields(Profile)
                   if getattr(override, f.name) not in (None, [])}
        merged[name] = replace(base, **changes)
    return merged


def shaping_for(mx_hosts: list[str], config: DeliveryConfig, table: dict[str, Profile]) -> Shaping:
    """The profile whose MX suffix matches one of ``mx_hosts``, over "default"."""
    default = table["default"]
    chosen_name, chosen = "default", default
    for name, profile in table.items():
        if name != "default" and any(h.endswith(s) for h in mx_hosts for s in profile.mx_suffixes):
            chosen_name, chosen = name, profile
            break

    def value(attribute: str) -> Any:
        own = getattr(chosen, attribute)
        return own if own is not None else getattr(default, attribute)

    rules = [*config.backoff, *default.backoff, *(chosen.backoff if chosen is not default else [])]
    return Shaping(
        name=chosen_name,
        max_connections=value("max_connections"),
        max_messages_per_connection=value("max_messages_per_connection"),
        messages_per_minute=value("messages_per_minute"),
        connections_per_minute=value("connections_per_minute"),
        idle_timeout=value("idle_timeout"),
        tls=value("tls"),
        rules=tuple(Rule(re.compile(r.pattern, re.I), r.pause, r.messages_per_minute, r.max_connections,
                         r.duration) for r in rules),
    )


class RateLimiter:
    """Evenly spaced events at ``per_minute``, with a burst of one second's worth (GCRA)."""

    def __init__(self, per_minute: float) -> None:
        self._tat = 0.0
        self.set_rate(per_minute)

    def set_rate(self, per_minute: float) -> None:
        """Change the rate, keeping the schedule (a reset would let a burst through)."""
        self.interval = 60.0 / per_minute
        self.burst = max(1.0, per_minute / 60.0)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event; 0 means go now (and it is counted)."""
        tat = max(self._tat, now)
        allowed = tat - self.interval * (self.burst - 1)
        if now < allowed:
            return allowed - now
        self._tat = tat + self.interval
        return 0.0


class Turns:
    """Events at a RateLimiter's pace: one goes now, or one timer calls ``retry`` when
    the next may go (however many are waiting)."""

    def __init__(self, limiter: RateLimiter, clock: Any, sleep: Callable[[float], defer.Deferred],
                 retry: Callable[[], None]) -> None:
        self._limiter = limiter
        self._clock = clock
        self._sleep = sleep
        self._retry = retry
        self._timer = False

    def take(self) -> bool:
        """True: go now (counted). False: ``retry`` runs once the next event may go."""
        wait = self._limiter.delay(self._clock.seconds())
        if wait <= 0:
            return True
        if not self._timer:
            self._timer = True
            self._sleep(wait).addCallback(self._fired)
        return False

    def _fired(self, _: object) -> None:
        self._timer = False
        self._retry()
