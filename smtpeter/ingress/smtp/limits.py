"""Limits that hold for the whole SMTP service, whatever listener a client comes in on.

A client that opens 50 sessions on the STARTTLS port and 50 on the
implicit-TLS port, or guesses passwords over many connections at once, is
one client: the counts live here, shared by every listener's factory, not in
a factory or a session.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from twisted.logger import Logger

log = Logger()


class ConnectionLimits:
    """Concurrent sessions in all, and per client address (trusted networks are exempt from the latter)."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.per_client: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str, trusted: bool) -> str | None:
        """Why this connection may not have a session, or None: it may (and now counts)."""
        if self.total >= self.max_connections:
            return "Too many connections, try again later"
        if not trusted and self.per_client[address] >= self.max_per_client:
            return "Too many connections from your address"
        self.total += 1
        self.per_client[address] += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]


class _Failures:
    """Times of recent failures per key, inside a sliding window, with a bounded number of keys."""

    def __init__(self, window: float, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._times: dict[str, deque[float]] = {}

    def count(self, key: str, now: float) -> int:
        times = self._times.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[key]
        return len(times)

    def add(self, key: str, now: float) -> None:
        if key not in self._times and len(self._times) >= self.max_keys:
            self._prune(now)
        self._times.setdefault(key, deque()).append(now)

    def remove_last(self, key: str) -> None:
        times = self._times.get(key)
        if times:
            times.pop()
            if not times:
                del self._times[key]

    def _prune(self, now: float) -> None:
        for key in list(self._times):
            self.count(key, now)
        if len(self._times) >= self.max_keys:  # all of them recent: forget the quietest half
            for key in sorted(self._times, key=lambda k: self._times[k][-1])[: self.max_keys // 2]:
                del self._times[key]


# Usernames are counted by their first characters: a 12 KB name must not cost 12 KB a key.
_LOGIN_KEY_LENGTH = 256


class AuthThrottle:
    """Failed AUTH attempts counted per client address and per login, across connections and listeners.

    An address with ``per_client`` failures inside ``window`` seconds is not
    heard until the oldest of them ages out; a login with ``per_login``
    failures (from anywhere) is locked the same way, except for addresses it
    logged in from successfully in the last ``known_for`` seconds: an attack
    on a login from elsewhere does not lock out its real user, and any lock
    ends by itself within ``window``. An attempt counts as a failure from the
    moment it starts until it succeeds, so parallel connections cannot race
    past the limit. Trusted networks are not limited per address.
    """

    def __init__(self, clock: Any, per_client: int = 10, per_login: int = 30, window: float = 900.0,
                 known_for: float = 30 * 86400.0) -> None:
        self.clock = clock
        self.per_client = per_client
        self.per_login = per_login
        self.window = window
        self.known_for = known_for
        self._clients = _Failures(window)
        self._logins = _Failures(window)
        self._known: dict[tuple[str, str], float] = {}
        self._announced: dict[str, float] = {}  # locks already logged, until when

    def start(self, address: str, username: str, trusted: bool = False) -> str | None:
        """Why an attempt by ``address`` as ``username`` is refused unchecked, or None: go ahead,
        then call ``finish``."""
        now = self.clock.seconds()
        login = username[:_LOGIN_KEY_LENGTH]
        if not trusted and self._clients.count(address, now) >= self.per_client:
            reason = "too many failed attempts from this address"
        elif self._logins.count(login, now) >= self.per_login and self._known.get((login, address), 0) <= now:
            reason = "too many failed attempts for this login"
        else:
            if not trusted:
                self._clients.add(address, now)
            self._logins.add(login, now)
            return None
        self._announce(f"{reason}: client={address} login={login}", now)
        return reason

    def finish(self, address: str, username: str, succeeded: bool | None, trusted: bool = False) -> None:
        """How the attempt ended: True let in, False refused, None undecided (the check itself failed)."""
        now = self.clock.seconds()
        login = username[:_LOGIN_KEY_LENGTH]
        if succeeded is False:
            return
        # It was no failure after all.
        if not trusted:
            self._clients.remove_last(address)
        self._logins.remove_last(login)
        if succeeded:
            if len(self._known) >= 100_000:
                self._known = {k: v for k, v in self._known.items() if v > now}
            self._known[(login, address)] = now + self.known_for

    def _announce(self, what: str, now: float) -> None:
        """One log line per lock and window, however many attempts it refuses."""
        if self._announced.get(what, 0) > now:
            return
        if len(self._announced) >= 10_000:
            self._announced = {k: v for k, v in self._announced.items() if v > now}
        self._announced[what] = now + self.window
        log.warn("AUTH attempts refused unchecked for up to {window:g}s, {what}", window=self.window,
                 what=what)
