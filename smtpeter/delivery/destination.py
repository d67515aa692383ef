"""One destination's connection pool: queued transactions, sessions, reuse, MX fallback, backoff.

A destination is everything that shares one set of MX hosts (MX rollup: all
domains hosted at Google share Google's pool) or one static route. Each has
a queue of transactions and a few worker sessions pulling from it, within the
limits of its shaping profile (``shaping.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from smtpeter import dns
from smtpeter.attempt import Capabilities, Peer, RecipientResult
from smtpeter.config import DeliveryConfig, Timeouts
from smtpeter.delivery.client_connection import ClientConnection, connect
from smtpeter.delivery.client_session import ClientSession, NotForThisPeer, SessionError, Transaction
from smtpeter.delivery.shaping import RateLimiter, Rule, Shaping, Turns

log = Logger()

# How many addresses one connection attempt tries before giving up (Postfix: 5).
MAX_ADDRESSES_PER_ATTEMPT = 5
# After a failed TLS handshake, an opportunistic destination host is tried in plaintext this long.
TLS_FAILURE_MEMORY = 3600.0
# The deferral rate covers the recipients attempted this recently, at most RECENT_ATTEMPTS of them.
RECENT_SECONDS = 900.0
RECENT_ATTEMPTS = 1000
HELD = "paused by the operator"


class HandBack(Exception):
    """Not attempted: return these recipients to the queue, due at ``until``.

    For a paused or overloaded destination and at shutdown. It does not count
    as a delivery attempt.
    """

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


@dataclass
class WaitingTransaction:
    """A transaction in a destination's queue, and the Deferred its results go to."""

    transaction: Transaction
    queued_at: float
    result: defer.Deferred = field(default_factory=defer.Deferred)


async def unchanged(transaction: Transaction, capabilities: Capabilities) -> Transaction:
    """The default ``Context.for_peer``: every peer gets the transaction as it is."""
    return transaction


@dataclass
class Context:
    """What every destination shares."""

    reactor: Any  # for opening connections only
    clock: Any  # every timer and "now" (tests drive it by hand)
    resolver: dns.Resolver
    timeouts: Timeouts
    helo_name: str
    # Recipients waiting in one destination, at most (so one slow destination
    # cannot fill the scheduler's whole window), and how long they may wait
    # there (well inside the lease, so nobody else takes them meanwhile).
    max_backlog: int = 500
    max_wait: float = 900.0
    # The transaction in the form a peer with these capabilities gets (the outbound
    # pipeline's last steps: 7-bit for a peer without 8BITMIME, then DKIM). It raises
    # NotForThisPeer when the peer cannot take it. The client sends what it returns as it is.
    for_peer: Callable[[Transaction, Capabilities], Awaitable[Transaction]] = unchanged

    @classmethod
    def for_config(cls, config: DeliveryConfig, reactor: Any, clock: Any, resolver: dns.Resolver,
                   helo_name: str,
                   for_peer: Callable[[Transaction, Capabilities], Awaitable[Transaction]] = unchanged,
                   ) -> Context:
        """A quarter of the scheduler's window per destination; waits of at most half a lease."""
        return cls(reactor, clock, resolver, config.timeouts, helo_name,
                   max_backlog=max(10, config.window // 4), max_wait=config.lease / 2, for_peer=for_peer)

    @property
    def claim_limit(self) -> int:
        """Recipients one claim may lease: a destination with this much room takes them all."""
        return max(1, self.max_backlog // 2)


# A destination no host of which answers rests this long, doubling up to DOWN_MAX.
DOWN_MIN, DOWN_MAX = 60.0, 600.0


class Destination:
    """One destination's waiting work and sessions.

    Backpressure: while it holds more than ``max_backlog - claim_limit``
    recipients it is ``busy`` and the scheduler claims nothing for it; once
    its sessions have taken enough to make room for a whole claim again it
    calls ``on_room``, and the scheduler claims at once. So a backlog in
    storage drains at the rate the sessions take it, without hand-backs.
    """

    def __init__(self, key: str, hosts: list[tuple[str, int]], shaping: Shaping, context: Context,
                 implicit_mx: bool = False, on_room: Callable[[], None] = lambda: None) -> None:
        self.key = key
        self.hosts = hosts  # (host name or IP, port), in the order to try them
        self.shaping = shaping
        self.context = context
        self.implicit_mx = implicit_mx
        self.on_room = on_room
        self.queue: deque[WaitingTransaction] = deque()
        self.backlog = 0  # recipients in the queue
        self.sessions = 0  # connecting or connected
        self.connected = 0
        self.idle: deque[defer.Deferred] = deque()  # sessions waiting for a job
        self.paused_until = 0.0
        self.pause_reason = ""
        self.held = False  # the operator's pause (hold/resume): until resumed, however long
        self.down_until = 0.0
        self._down_error: SessionError | None = None
        self._failures = 0  # connection attempts in a row that reached no host
        self._override: tuple[float, Rule] | None = None
        self._message_rate = RateLimiter(shaping.messages_per_minute)
        self._connect_turns = Turns(RateLimiter(shaping.connections_per_minute), context.clock,
                                    self._sleep, self._pump)
        self._message_turns = Turns(self._message_rate, context.clock, self._sleep, self._give_slots)
        self._no_tls_until: dict[str, float] = {}
        self._timers: set[Any] = set()  # pending pumps, rate waits and sweeps, cancelled on close
        self._sweep_timer = False
        self._rate_waiters: deque[defer.Deferred] = deque()  # sessions waiting for a message slot
        self._live: set[ClientConnection] = set()
        self._closing = False
        self._ended: list[defer.Deferred] = []
        self.delivered = 0
        self.connections_opened = 0
        self.last_used = self._now()
        # (when, deferred) per recipient attempted, newest last: the deferral rate's window.
        self._recent: deque[tuple[float, bool]] = deque(maxlen=RECENT_ATTEMPTS)
        self.last_error: tuple[float, str] | None = None  # when, the reply (or why there was none)

    # -- limits, possibly lowered by a backoff rule -------------------------------

    def _now(self) -> float:
        return self.context.clock.seconds()

    def _active_override(self) -> Rule | None:
        if self._override is not None and self._override[0] > self._now():
            return self._override[1]
        if self._override is not None:
            self._override = None
            self._message_rate.set_rate(self.shaping.messages_per_minute)
        return None

    @property
    def max_connections(self) -> int:
        rule = self._active_override()
        if rule is not None and rule.max_connections:
            return min(rule.max_connections, self.shaping.max_connections)
        return self.shaping.max_connections

    @property
    def paused(self) -> bool:
        return self.held or self.paused_until > self._now()

    @property
    def down(self) -> bool:
        return self.down_until > self._now()

    @property
    def busy(self) -> bool:
        """Without room for another claim's worth: the scheduler leaves its domains alone meanwhile."""
        return self.backlog > self.context.max_backlog - self.context.claim_limit

    @property
    def idle_for(self) -> float:
        if self.sessions or self.queue or self.paused or self.down:
            return 0.0
        return self._now() - self.last_used

    # -- the queue -------------------------------------------------------------------

    def submit(self, transaction: Transaction) -> defer.Deferred:
        """Deliver ``transaction``: fires with one RecipientResult per recipient, or
        fails with HandBack when it was not attempted."""
        now = self._now()
        self.last_used = now
        job = WaitingTransaction(transaction, now)
        if self._closing:
            job.result.errback(HandBack(now, "shutting down"))
        elif self.paused:
            job.result.errback(self._paused())
        elif self.down and self._down_error is not None:
            # No host answered a moment ago: fail at once (a retry on the schedule).
            job.result.callback(self._session_results(transaction, self._down_error, None))
        elif self.backlog and self.backlog + len(transaction.recipients) > self.context.max_backlog:
            # Rare: claims stop before this (see busy). The work is due again at once,
            # and stays unclaimed while this destination is busy.
            job.result.errback(HandBack(now, "destination backlog is full"))
        else:
            self._put(job)
            self._pump()
            self._schedule_sweep()
        return job.result.addCallback(self._note)

    # -- what the operator sees and does ------------------------------------------------

    def _note(self, results: list[RecipientResult]) -> list[RecipientResult]:
        """Count an attempt's results for the deferral rate; keep the last error."""
        now = self._now()
        for result in results:
            self._recent.append((now, not result.delivered and not result.permanent))
            if not result.delivered:
                self.last_error = (now, result.description)
        return results

    def figures(self) -> dict[str, Any]:
        """What /metrics and the operator's dashboard show of this destination."""
        now = self._now()
        recent = [deferred for when, deferred in self._recent if now - when <= RECENT_SECONDS]
        rule_pause = self.paused_until > now
        return {"sessions": self.sessions, "queued": len(self.queue), "paused": self.paused,
                "delivered": self.delivered, "connections": self.connections_opened,
                "held": self.held, "profile": self.shaping.name,
                "paused_until": self.paused_until if rule_pause else None,
                "pause_reason": self.pause_reason if rule_pause else "",
                "down_until": self.down_until if self.down else None,
                "attempts": len(recent), "deferred": sum(recent),
                "deferral_rate": sum(recent) / len(recent) if recent else None,
                "last_error": self.last_error[1] if self.last_error else "",
                "last_error_time": self.last_error[0] if self.last_error else None}

    def hold(self) -> None:
        """The operator's pause: no new connection, no next message on an open one, until
        ``resume``; what waits here goes back to the queue (not an attempt), idle sessions QUIT."""
        self.held = True
        self._hand_back_all(self._paused())
        while self.idle:
            self.idle.popleft().callback(None)

    def resume(self) -> None:
        """End the operator's pause and a backoff rule's; the scheduler claims for it again."""
        self.held = False
        self.paused_until = 0.0
        self.pause_reason = ""
        self.on_room()

    def retry_now(self) -> None:
        """Connect again at once, even while resting after failed connections."""
        self.down_until = 0.0
        self._down_error = None
        self._pump()

    def _paused(self) -> HandBack:
        """Hand-backs while paused: due when the pause ends (a held destination's domains are
        left out of claims meanwhile, whenever they are due)."""
        now = self._now()
        if self.paused_until > now:
            return HandBack(self.paused_until, self.pause_reason)
        return HandBack(now, HELD)

    def _put(self, job: WaitingTransaction, front: bool = False) -> None:
        if front:
            self.queue.appendleft(job)
        else:
            self.queue.append(job)
        self.backlog += len(job.transaction.recipients)

    def _take(self) -> WaitingTransaction:
        """The first waiting job; tells the scheduler when that makes room for a claim."""
        was_busy = self.busy
        job = self.queue.popleft()
        self.backlog -= len(job.transaction.recipients)
        if was_busy and not self.busy:
            self.on_room()
        return job

    def _pump(self) -> None:
        """Give queued jobs to idle sessions; open sessions while the limits allow."""
        if self._closing:
            return
        while self.queue and self.idle:
            self.idle.popleft().callback(self._take())
        if not self.queue or self.paused or self.down or self.sessions >= self.max_connections:
            return
        if self.sessions >= len(self.queue) and self.sessions > 0:
            return  # sessions that are busy now will take the waiting jobs
        if not self._connect_turns.take():
            return
        self.sessions += 1
        defer.Deferred.fromCoroutine(self._session()).addErrback(
            lambda f: log.failure("delivery session to {key} crashed", f, key=self.key))
        if self.queue:
            self._pump()

    def _schedule_sweep(self) -> None:
        if not self._sweep_timer and self.queue:
            self._sweep_timer = True
            self._sleep(min(30.0, self.context.max_wait / 2)).addCallback(self._sweep)

    def _sweep(self, _: object) -> None:
        """Hand back work that waited too long here: its lease must not run out with us."""
        self._sweep_timer = False
        if self._closing:
            return
        now = self._now()
        while self.queue and now - self.queue[0].queued_at > self.context.max_wait:
            self._take().result.errback(HandBack(now, "waited too long for a connection"))
        self._schedule_sweep()

    def _sleep(self, seconds: float) -> defer.Deferred:
        """A Deferred that fires after ``seconds``, or at once when the destination closes."""
        d: defer.Deferred = defer.Deferred()

        def wake() -> None:
            self._timers.discard(timer)
            d.callback(None)

        timer = self.context.clock.callLater(seconds, wake)
        self._timers.add(timer)
        return d

    def close(self) -> defer.Deferred:
        """Stop: hand back what waits, let idle sessions QUIT; fires when all sessions ended."""
        self._closing = True
        for timer in list(self._timers):
            timer.reset(0)
        self._hand_back_all(HandBack(self._now(), "shutting down"))
        while self.idle:
            self.idle.popleft().callback(None)
        if self.sessions == 0:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._ended.append(d)
        return d

    def abort(self) -> None:
        """Cut the sessions that are still busy (after the shutdown grace period)."""
        for connection in list(self._live):
            connection.abort()

    def _hand_back_all(self, reason: HandBack) -> None:
        while self.queue:
            self._take().result.errback(reason)

    def _next_job(self) -> defer.Deferred:
        if self.queue:
            return defer.succeed(self._take())
        waiter: defer.Deferred = defer.Deferred()
        self.idle.append(waiter)

        def expire() -> None:
            if waiter in self.idle:
                self.idle.remove(waiter)
                waiter.callback(None)

        timer = self.context.clock.callLater(self.shaping.idle_timeout, expire)

        def stop_timer(result: WaitingTransaction | None) -> WaitingTransaction | None:
            if timer.active():
                timer.cancel()
            return result

        return waiter.addBoth(stop_timer)

    def _requeue(self, job: WaitingTransaction) -> None:
        """Put a job that never started back in front (or hand it back when closing)."""
        if self._closing:
            job.result.errback(HandBack(self._now(), "shutting down"))
        else:
            self._put(job, front=True)

    # -- sessions ---------------------------------------------------------------------

    async def _session(self) -> None:
        try:
            connection = await self._open()
        except Exception as exc:
            if not isinstance(exc, SessionError):
                log.failure("connecting to {key} failed unexpectedly", key=self.key)
                exc = SessionError("connect", f"internal error while connecting: {exc!r}")
            self._connection_failed(exc)
            self._session_ended()
            return
        self._failures = 0
        self.connected += 1
        self.connections_opened += 1
        self._live.add(connection)
        try:
            await self._deliver_over(connection)
        except Exception:
            log.failure("delivery session to {key} failed", key=self.key)
        finally:
            self._live.discard(connection)
            # The slot stays taken until the connection is really closed, so the
            # connection limit holds as the receiving server counts it.
            await connection.quit()
            self.connected -= 1
            self._session_ended()

    def _session_ended(self) -> None:
        self.sessions -= 1
        self.last_used = self._now()
        if self._closing:
            if self.sessions == 0:
                ended, self._ended = self._ended, []
                for d in ended:
                    d.callback(None)
            return
        self._pump()

    async def _deliver_over(self, connection: ClientConnection) -> None:
        sent = 0
        while sent < self.shaping.max_messages_per_connection:
            if self.paused or self._closing or self.sessions > self.max_connections:
                return  # a backoff rule lowered the limit: this session makes room
            job = await self._next_job()
            if job is None:
                return
            if not connection.usable:  # it died while idle; the job has not started
                self._requeue(job)
                return
            await self._wait_for_rate()
            if self.paused or self._closing:
                job.result.errback(self._paused() if self.paused else HandBack(self._now(), "shutting down"))
                return
            try:
                results = await self._run(connection, job.transaction)
            except SessionError as exc:
                if exc.state == "rset":
                    # The reused session died before this message began: give it a fresh one.
                    self._requeue(job)
                else:
                    job.result.callback(self._session_results(job.transaction, exc, connection.peer))
                self._apply_rules(exc.description)
                return
            except Exception as exc:
                log.failure("delivering to {key} failed unexpectedly", key=self.key)
                job.result.callback(self._session_results(
                    job.transaction, SessionError("internal", f"internal error: {exc!r}"), connection.peer))
                connection.abort()
                return
            sent += 1
            self.delivered += sum(1 for r in results if r.delivered)
            job.result.callback(results)
            for text in {r.description for r in results if not r.delivered}:
                self._apply_rules(text)
            if not connection.usable:
                return

    async def _run(self, connection: ClientConnection, transaction: Transaction) -> list[RecipientResult]:
        """One job: its transaction in the form this peer gets, then delivered."""
        try:
            transaction = await self.context.for_peer(transaction, connection.capabilities)
        except NotForThisPeer as exc:
            results = [RecipientResult(r.address, "mailfrom", None, exc.status, exc.description,
                                       permanent=True) for r in transaction.recipients]
        except defer.CancelledError:
            raise
        except Exception as exc:
            # Our own fault (a worker died): retried later; the connection is fine and stays.
            log.failure("preparing a transaction for {key} failed", key=self.key)
            results = [RecipientResult(r.address, "internal", None, "4.3.0",
                                       f"internal error preparing the message: {exc!r}")
                       for r in transaction.recipients]
        else:
            results = await self._deliver(connection, transaction)
        for result in results:
            result.peer = connection.peer
        return results

    @staticmethod
    async def _deliver(connection: ClientConnection, transaction: Transaction) -> list[RecipientResult]:
        """Recipients refused with "too many recipients" (452, RFC 5321 §4.5.3.1.10) go again
        at once in a next transaction, as long as each makes progress. (The same bytes: the
        job was made for this peer once.)"""
        results = list(await connection.deliver(transaction))  # by position: an address may come twice
        sent = range(len(results))
        while connection.usable:
            rest = [index for index in sent if _too_many(results[index])]
            if not rest or len(rest) == len(sent):
                break
            batch = transaction.with_recipients([transaction.recipients[index] for index in rest])
            for index, result in zip(rest, await connection.deliver(batch), strict=True):
                results[index] = result
            sent = rest
        return results

    def _wait_for_rate(self) -> defer.Deferred:
        """Fires when this session may send a message. Sessions queue for the slots in
        turn, under one timer: not one wake-up per waiting session per slot."""
        if not self._rate_waiters and (self._closing or self._message_turns.take()):
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._rate_waiters.append(waiter)
        self._give_slots()
        return waiter

    def _give_slots(self) -> None:
        while self._rate_waiters:
            if not self._closing and not self._message_turns.take():
                return
            self._rate_waiters.popleft().callback(None)

    async def _open(self) -> ClientConnection:
        """Connect to the first host that answers, in MX order; raises the last SessionError."""
        context = self.context
        last: SessionError | None = None
        tried = 0
        lookups_failed = False  # temporarily: a later attempt may find an address
        any_address = False
        for host, port in self.hosts:
            try:
                addresses = await context.resolver.addresses(host)
            except dns.DNSError as exc:
                lookups_failed = lookups_failed or exc.temporary
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
        if self.implicit_mx and not any_address and not lookups_failed:
            raise SessionError("dns", f"{self.hosts[0][0]} has no MX and no address records",
                               permanent=True)
        raise last or SessionError("connect", "no reachable mail exchanger")

    async def _handshake(self, host: str, ip: str, port: int) -> ClientConnection:
        context = self.context
        tls = self.shaping.tls
        if tls == "opportunistic" and self._no_tls_until.get(ip, 0) > self._now():
            tls = "disabled"
        session = ClientSession(context.helo_name, context.timeouts, tls)
        connection = await connect(context.reactor, context.clock, Peer(host, ip, port), session,
                                   context.timeouts.connect)
        try:
            await connection.handshake()
        except SessionError as exc:
            connection.abort()
            if exc.state == "starttls" and tls == "opportunistic" and "handshake" in exc.description:
                # A broken TLS stack must not block the mail: plaintext for a while.
                self._no_tls_until[ip] = self._now() + TLS_FAILURE_MEMORY
                return await self._handshake(host, ip, port)
            raise
        return connection

    def _session_results(self, transaction: Transaction, exc: SessionError,
                         peer: Peer | None) -> list[RecipientResult]:
        reply = exc.reply
        permanent = exc.permanent or bool(reply and reply.code >= 500 and exc.state not in _TEMPORARY_STATES)
        status = reply.status if reply and reply.status else ("5.0.0" if permanent else "4.0.0")
        if not permanent and status.startswith("5"):
            status = "4" + status[1:]
        return [RecipientResult(r.address, exc.state, reply.code if reply else None, status,
                                exc.description, permanent=permanent, peer=peer)
                for r in transaction.recipients]

    def _connection_failed(self, exc: SessionError) -> None:
        """No host took a connection. If no session is connected either, nothing can take
        the waiting jobs: they fail now (to be retried), and the destination rests."""
        log.info("cannot deliver to {key}: {error}", key=self.key, error=exc.description)
        self._apply_rules(exc.description)
        self._failures += 1
        if self.connected:
            return
        if not exc.permanent:
            self.down_until = self._now() + min(DOWN_MIN * 2 ** (self._failures - 1), DOWN_MAX)
            self._down_error = exc
        while self.queue:
            job = self._take()
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
                self._hand_back_all(HandBack(self.paused_until, self.pause_reason))
            if (rule.messages_per_minute or rule.max_connections) and self._active_override() is None:
                self._override = (now + rule.duration, rule)
                if rule.messages_per_minute:
                    self._message_rate.set_rate(min(rule.messages_per_minute,
                                                    self.shaping.messages_per_minute))
                log.warn("slowing deliveries to {key} for {seconds:g}s: {text}", key=self.key,
                         seconds=rule.duration, text=text)


# A 5xx at these steps says nothing about the recipients: an RBL listing of our
# address, a broken EHLO. Postfix treats them as temporary (smtp_skip_5xx_greeting).
_TEMPORARY_STATES = {"greeting", "ehlo", "helo", "starttls", "connect", "dns", "rset"}


def _too_many(result: RecipientResult) -> bool:
    return result.code == 452 and (result.status == "4.5.3" or "too many recipients"
                                   in result.description.lower())
