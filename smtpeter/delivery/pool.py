"""Per-destination connection pools: reuse, throttles, MX fallback and backoff.

A destination is everything that shares one set of MX hosts (MX rollup: all
domains hosted at Google share Google's pool) or one static route. Each has
a queue of transactions and a few worker sessions pulling from it, within the
limits of its shaping profile: concurrent connections, new connections per
minute, messages per minute, messages per connection, idle time.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from smtpeter.config import BackoffRule, DeliveryConfig, Profile, Timeouts
from smtpeter.delivery import dns
from smtpeter.delivery.client import (
    Peer,
    RecipientResult,
    SessionError,
    SMTPSession,
    Transaction,
    connect,
)

log = Logger()

# How many addresses one connection attempt tries before giving up (Postfix: 5).
MAX_ADDRESSES_PER_ATTEMPT = 5
# After a failed TLS handshake, an opportunistic destination host is tried in plaintext this long.
TLS_FAILURE_MEMORY = 3600.0

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
        self.interval = 60.0 / per_minute
        self.burst = max(1.0, per_minute / 60.0)
        self._tat = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event; 0 means go now (and it is counted)."""
        tat = max(self._tat, now)
        allowed = tat - self.interval * (self.burst - 1)
        if now < allowed:
            return allowed - now
        self._tat = tat + self.interval
        return 0.0


class DestinationPaused(Exception):
    """A backoff rule paused the destination; hand the recipients back until ``until``."""

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


@dataclass
class Job:
    transaction: Transaction
    result: defer.Deferred = field(default_factory=defer.Deferred)


@dataclass
class Context:
    """What every destination shares."""

    reactor: Any
    clock: Any
    resolver: dns.Resolver
    timeouts: Timeouts
    helo_name: str


class Destination:
    def __init__(self, key: str, hosts: list[tuple[str, int]], shaping: Shaping, context: Context,
                 implicit_mx: bool = False) -> None:
        self.key = key
        self.hosts = hosts  # (host name or IP, port), in the order to try them
        self.shaping = shaping
        self.context = context
        self.implicit_mx = implicit_mx
        self.queue: deque[Job] = deque()
        self.sessions = 0  # connecting or connected
        self.idle: deque[defer.Deferred] = deque()  # sessions waiting for a job
        self.paused_until = 0.0
        self.pause_reason = ""
        self._override: tuple[float, Rule] | None = None
        self._connect_rate = RateLimiter(shaping.connections_per_minute)
        self._message_rate = RateLimiter(shaping.messages_per_minute)
        self._no_tls_until: dict[str, float] = {}
        self._timers: set[Any] = set()  # pending pumps and rate waits, cancelled on close
        self._live: set[SMTPSession] = set()
        self._closing = False
        self._ended: list[defer.Deferred] = []
        self.delivered = 0
        self.connections_opened = 0

    # -- limits, possibly lowered by a backoff rule -------------------------------

    def _now(self) -> float:
        return self.context.clock.seconds()

    def _active_override(self) -> Rule | None:
        if self._override is not None and self._override[0] > self._now():
            return self._override[1]
        if self._override is not None:
            self._override = None
            self._message_rate = RateLimiter(self.shaping.messages_per_minute)
        return None

    @property
    def max_connections(self) -> int:
        rule = self._active_override()
        if rule is not None and rule.max_connections:
            return min(rule.max_connections, self.shaping.max_connections)
        return self.shaping.max_connections

    @property
    def paused(self) -> bool:
        return self.paused_until > self._now()

    # -- the queue -------------------------------------------------------------------

    def submit(self, transaction: Transaction) -> defer.Deferred:
        """Deliver ``transaction``; fires with one RecipientResult per recipient,
        or fails with DestinationPaused."""
        job = Job(transaction)
        if self._closing:
            job.result.errback(DestinationPaused(self._now(), "shutting down"))
            return job.result
        if self.paused:
            job.result.errback(DestinationPaused(self.paused_until, self.pause_reason))
            return job.result
        self.queue.append(job)
        self._pump()
        return job.result

    def _pump(self) -> None:
        """Give queued jobs to idle sessions; open sessions while the limits allow."""
        if self._closing:
            return
        while self.queue and self.idle:
            self.idle.popleft().callback(self.queue.popleft())
        if not self.queue or self.paused or self.sessions >= self.max_connections:
            return
        if self.sessions >= len(self.queue) and self.sessions > 0:
            return  # sessions that are busy now will take the waiting jobs
        wait = self._connect_rate.delay(self._now())
        if wait > 0:
            if not self._timers:
                self._sleep(wait).addCallback(lambda _: self._pump())
            return
        self.sessions += 1
        defer.Deferred.fromCoroutine(self._session()).addErrback(
            lambda f: log.failure("delivery session to {key} crashed", f, key=self.key))
        if self.queue:
            self._pump()

    def _sleep(self, seconds: float) -> defer.Deferred:
        """A Deferred that fires after ``seconds``, or at once when the destination closes."""
        d: defer.Deferred = defer.Deferred()

        def wake() -> None:
            self._timers.discard(timer)
            d.callback(None)

        timer = self.context.reactor.callLater(seconds, wake)
        self._timers.add(timer)
        return d

    def close(self) -> defer.Deferred:
        """Stop: hand back what waits, let idle sessions QUIT; fires when all sessions ended."""
        self._closing = True
        for timer in list(self._timers):
            timer.reset(0)
        shutting_down = DestinationPaused(self._now(), "shutting down")
        while self.queue:
            self.queue.popleft().result.errback(shutting_down)
        while self.idle:
            self.idle.popleft().callback(None)
        if self.sessions == 0:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._ended.append(d)
        return d

    def abort(self) -> None:
        """Cut the sessions that are still busy (after the shutdown grace period)."""
        for session in list(self._live):
            session.abort()

    def _next_job(self) -> defer.Deferred:
        if self.queue:
            return defer.succeed(self.queue.popleft())
        waiter: defer.Deferred = defer.Deferred()
        self.idle.append(waiter)

        def expire() -> None:
            if waiter in self.idle:
                self.idle.remove(waiter)
                waiter.callback(None)

        timer = self.context.reactor.callLater(self.shaping.idle_timeout, expire)

        def stop_timer(result: Job | None) -> Job | None:
            if timer.active():
                timer.cancel()
            return result

        return waiter.addBoth(stop_timer)

    # -- sessions ---------------------------------------------------------------------

    async def _session(self) -> None:
        try:
            session = await self._open()
        except SessionError as exc:
            self._connection_failed(exc)
            self._session_ended()
            return
        self.connections_opened += 1
        self._live.add(session)
        try:
            await self._deliver_over(session)
        finally:
            self._live.discard(session)
            # The slot stays taken until the connection is really closed, so the
            # connection limit holds as the receiving server counts it.
            await session.quit()
            self._session_ended()

    def _session_ended(self) -> None:
        self.sessions -= 1
        if self._closing:
            if self.sessions == 0:
                ended, self._ended = self._ended, []
                for d in ended:
                    d.callback(None)
            return
        self._pump()

    async def _deliver_over(self, session: SMTPSession) -> None:
        sent = 0
        while (sent < self.shaping.max_messages_per_connection and session.usable and not self.paused
               and not self._closing):
            job = await self._next_job()
            if job is None:
                return
            await self._wait_for_rate()
            if self.paused or self._closing:
                job.result.errback(DestinationPaused(max(self.paused_until, self._now()),
                                                     self.pause_reason or "shutting down"))
                return
            try:
                results = await session.deliver(job.transaction)
            except SessionError as exc:
                if exc.state == "rset":
                    # The reused session died before this message began: give it a fresh one.
                    self.queue.appendleft(job)
                else:
                    job.result.callback(self._session_results(job.transaction, exc, session.peer))
                self._apply_rules(exc.description)
                return
            sent += 1
            self.delivered += sum(1 for r in results if r.delivered)
            for result in results:
                result.peer = session.peer
            job.result.callback(results)
            for text in {r.description for r in results if not r.delivered}:
                self._apply_rules(text)

    async def _wait_for_rate(self) -> None:
        while not self._closing:
            wait = self._message_rate.delay(self._now())
            if wait <= 0:
                return
            await self._sleep(wait)

    async def _open(self) -> SMTPSession:
        """Connect to the first host that answers, in MX order; raises the last SessionError."""
        context = self.context
        last: SessionError | None = None
        tried = 0
        any_address = False
        for host, port in self.hosts:
            try:
                addresses = await context.resolver.addresses(host)
            except dns.DNSError as exc:
                last = SessionError("dns", f"cannot resolve {host}: {exc}")
                continue
            any_address = any_address or bool(addresses)
            for ip in addresses:
                if tried >= MAX_ADDRESSES_PER_ATTEMPT:
                    break
                tried += 1
                try:
                    return await self._handshake(host, ip, port)
                except SessionError as exc:
                    last = exc
        if self.implicit_mx and not any_address:
            raise SessionError("dns", f"{self.hosts[0][0]} has no MX and no address records",
                               permanent=True)
        raise last or SessionError("connect", "no reachable mail exchanger")

    async def _handshake(self, host: str, ip: str, port: int) -> SMTPSession:
        context = self.context
        tls = self.shaping.tls
        if tls == "opportunistic" and self._no_tls_until.get(ip, 0) > self._now():
            tls = "disabled"
        proto = await connect(context.reactor, host, ip, port, context.timeouts)
        local = proto.transport.getHost()
        session = SMTPSession(proto, Peer(host, ip, port, getattr(local, "host", "")), context.helo_name,
                              context.timeouts, context.clock)
        try:
            await session.handshake(tls)
        except SessionError as exc:
            session.abort()
            if exc.state == "starttls" and tls == "opportunistic" and "handshake" in exc.description:
                # A broken TLS stack must not block the mail: plaintext for a while.
                self._no_tls_until[ip] = self._now() + TLS_FAILURE_MEMORY
                return await self._handshake(host, ip, port)
            raise
        return session

    def _session_results(self, transaction: Transaction, exc: SessionError,
                         peer: Peer | None) -> list[RecipientResult]:
        reply = exc.reply
        status = reply.status if reply and reply.status else ("5.0.0" if exc.permanent else "4.0.0")
        return [RecipientResult(r.address, exc.state, reply.code if reply else None, status,
                                exc.description, permanent=exc.permanent or bool(reply and reply.code >= 500),
                                peer=peer) for r in transaction.recipients]

    def _connection_failed(self, exc: SessionError) -> None:
        """No host took the connection: everything waiting for this destination fails now."""
        log.info("cannot deliver to {key}: {error}", key=self.key, error=exc.description)
        self._apply_rules(exc.description)
        if self.sessions == 1:  # this one; else the sessions that work take the waiting jobs
            while self.queue:
                job = self.queue.popleft()
                job.result.callback(self._session_results(job.transaction, exc, None))

    # -- response-driven backoff ---------------------------------------------------

    def _apply_rules(self, text: str) -> None:
        for rule in self.shaping.rules:
            if not rule.pattern.search(text):
                continue
            now = self._now()
            if rule.pause > 0 and now + rule.pause > self.paused_until:
                self.paused_until = now + rule.pause
                self.pause_reason = f"paused by backoff rule /{rule.pattern.pattern}/: {text}"
                log.warn("pausing deliveries to {key} for {seconds:g}s: {text}", key=self.key,
                         seconds=rule.pause, text=text)
                paused = DestinationPaused(self.paused_until, self.pause_reason)
                while self.queue:
                    self.queue.popleft().result.errback(paused)
            if rule.messages_per_minute or rule.max_connections:
                self._override = (now + rule.duration, rule)
                if rule.messages_per_minute:
                    self._message_rate = RateLimiter(min(rule.messages_per_minute,
                                                         self.shaping.messages_per_minute))
                log.warn("slowing deliveries to {key} for {seconds:g}s: {text}", key=self.key,
                         seconds=rule.duration, text=text)
