"""Calls to webhooks: made from the durable event feed, kept, sent and retried.

**Making calls** (``consume``, the feed consumer ``webhooks``): every event of a type an active
hook of its account takes (``model.HOOK_TYPE``), and that happened since the hook became active,
becomes a call row holding the exact body, stored in one transaction with the feed's position:
after a restart no event is missed and none makes a second call. Delivery never waits for any of
this: the feed is read apart from it.

**Sending**: rounds claim due calls hook by hook, at most ``max_concurrency_per_endpoint`` in
flight per hook (and ``MAX_IN_FLIGHT`` in all), each leased for its timeout and a margin. Each
attempt is signed anew (a fresh ``webhook-timestamp``) under the same ``webhook-id``. Its result is
stored with the call's next state:

* a 2xx: delivered;
* ``410 Gone``: the hook is disabled and its pending calls dropped (``POST /v1/webhook/ID/enable``
  takes it up again, for events from then on);
* anything else, no answer, or an address we may not call: tried again after the next delay of
  ``retry_schedule`` (or what ``Retry-After`` asks, when that is longer; at most a day), given up
  after the last.

A node that restarts makes the calls it had leased due at once; one that died leaves them due when
their leases end. A call is sent at least once: a crash between a receiver's 2xx and its record
sends it again, under the same ``webhook-id``, which receivers use to drop repeats.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtpeter.events.feed import POLL_INTERVAL, SERVICE_PACE, NotifyingFeed
from smtpeter.ids import new_id
from smtpeter.storage import Storage, StorageError
from smtpeter.storage.db import Statement
from smtpeter.storage.models import Event
from smtpeter.storage.webhooks import (
    CALL_CANCELLED,
    CALL_DELIVERED,
    CALL_FAILED,
    CALL_PENDING,
    CallResult,
    NewWebhookCall,
    StoredWebhook,
    WebhookCall,
    insert_webhook_calls,
)
from smtpeter.webhooks.client import Answer, CallError
from smtpeter.webhooks.model import HOOK_TYPE, body_text, payload
from smtpeter.webhooks.ownership import NETWORK
from smtpeter.webhooks.signing import signed_headers

log = Logger()

CONSUMER = "webhooks"  # the feed consumer's name
MAX_IN_FLIGHT = 256  # calls in flight at once, over every hook
LEASE_MARGIN = 30.0  # seconds a lease outlasts the call's timeout
MAX_RETRY_AFTER = 86400.0  # a receiver's Retry-After is followed up to this many seconds
HISTORY_SECONDS = 30 * 86400.0  # finished calls and attempts are kept this long
PRUNE_INTERVAL = 3600.0
ERROR_TEXT = 200  # characters of a receiver's answer kept with a failed attempt


class Client(Protocol):
    async def request(self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None = None,
                      *, inside_only: bool = False, read: int = 1024) -> Answer: ...


@dataclass(frozen=True)
class SenderSettings:
    retry_schedule: tuple[float, ...]
    timeout: float
    max_concurrency_per_endpoint: int
    node: str  # the name on this node's leases


def outcome(call: WebhookCall, status: int | None, error: str, retry_after: float | None, now: float,
            duration: float, schedule: Sequence[float]) -> CallResult:
    """What an attempt at ``call`` makes of it: the receiver's ``status`` (None: no answer)."""
    attempt = call.attempts + 1
    if status is not None and 200 <= status < 300:
        return CallResult(call.id, call.webhook_id, attempt, now, status, duration, "", CALL_DELIVERED, now)
    if status == 410:
        return CallResult(call.id, call.webhook_id, attempt, now, status, duration, error, CALL_CANCELLED,
                          now, disable_hook="disabled: the receiver answered 410 Gone")
    if attempt > len(schedule):
        return CallResult(call.id, call.webhook_id, attempt, now, status, duration, error, CALL_FAILED, now)
    delay = schedule[attempt - 1]
    if retry_after is not None:
        # Never sooner than the schedule (which keeps retrying for its whole span), nor than asked.
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return CallResult(call.id, call.webhook_id, attempt, now, status, duration, error, CALL_PENDING,
                      now + delay)


class WebhookSender:
    """The feed consumer that makes calls, and the rounds that send them."""

    def __init__(self, storage: Storage, client: Client,
                 signing_secrets: Callable[[StoredWebhook], list[str]], clock: IReactorTime,
                 settings: SenderSettings, wall: Callable[[], float] = time.time,
                 pace: float = SERVICE_PACE) -> None:
        self.storage = storage
        self.client = client
        self.signing_secrets = signing_secrets
        self.clock = clock
        self.settings = settings
        # Signatures carry wall-clock time: the receiver compares it with its own clock.
        self.wall = wall
        self.feed = NotifyingFeed(storage, CONSUMER, clock, committed=self.wake, pace=pace)
        self.running = False
        self._in_flight: dict[str, int] = {}  # hook id -> calls in flight
        self._sends: set[defer.Deferred] = set()
        self._round: defer.Deferred | None = None
        self._again = False
        self._timer: Any = None
        self._prune_timer: Any = None

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        # Calls this node leased before it stopped were cut off or never sent: due now.
        await self.storage.release_webhook_calls(self.settings.node, self.clock.seconds())
        self.running = True
        self.feed.start(self.consume)
        self._prune()
        self.wake()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop making and sending calls; calls in flight get ``grace`` seconds to finish, then are cut
        (their leases stay with this node, which sends them again when it starts)."""
        self.running = False
        for timer in (self._timer, self._prune_timer):
            if timer is not None and timer.active():
                timer.cancel()
        await self.feed.stop()
        if self._round is not None:
            await self._round
        if self._sends:
            finished = defer.DeferredList(list(self._sends), consumeErrors=True)
            # Cancelling the list cancels every call still in it.
            if grace <= 0:
                finished.cancel()
            timer = self.clock.callLater(max(grace, 0.0), finished.cancel)
            await finished
            if timer.active():
                timer.cancel()

    @property
    def looking(self) -> bool:
        """Whether a round is looking for due calls."""
        return self._round is not None

    @property
    def calls_in_flight(self) -> int:
        return len(self._sends)

    # -- making calls ----------------------------------------------------------------------------

    async def consume(self, events: list[Event]) -> Sequence[Statement]:
        """The calls ``events`` make, as statements for the feed's transaction."""
        relevant = [event for event in events if event.type in HOOK_TYPE]
        if not relevant:
            return []
        hooks: dict[tuple[str, str], list[StoredWebhook]] = defaultdict(list)
        for hook in await self.storage.active_webhooks(sorted({event.account_id for event in relevant})):
            hooks[hook.account_id, hook.type].append(hook)
        calls = []
        for event in relevant:
            kind = HOOK_TYPE[event.type]
            body = None
            for hook in hooks.get((event.account_id, kind), ()):
                if hook.active_since is not None and event.time < hook.active_since:
                    continue  # from before the hook was proven or enabled: not its
                body = body or body_text(payload(event))
                calls.append(NewWebhookCall("msg_" + new_id(), hook.id, event.id, kind, body))
        return [insert_webhook_calls(calls, self.clock.seconds())] if calls else []

    # -- sending ---------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due calls now (again, once the round in progress is over)."""
        if not self.running:
            return
        if self._round is not None:
            self._again = True
            return
        self._round = defer.Deferred.fromCoroutine(self._rounds())

    async def _rounds(self) -> None:
        try:
            while self.running:
                self._again = False
                try:
                    await self._send_due()
                except StorageError as exc:
                    log.warn("webhooks: {exc}; looking again in {seconds:g} s", exc=exc,
                             seconds=POLL_INTERVAL)
                    self._wake_in(POLL_INTERVAL)
                except Exception:
                    log.failure("webhooks: a round of calls failed")
                    self._wake_in(POLL_INTERVAL)
                if not self._again:
                    break
        finally:
            self._round = None

    async def _send_due(self) -> None:
        settings = self.settings
        now = self.clock.seconds()
        for hook_id, due in (await self.storage.due_webhook_calls(now)).items():
            free = min(settings.max_concurrency_per_endpoint - self._in_flight.get(hook_id, 0),
                       MAX_IN_FLIGHT - len(self._sends), due)
            if free <= 0:
                continue  # a call that ends wakes us
            calls = await self.storage.claim_webhook_calls(hook_id, settings.node, free, now,
                                                           now + settings.timeout + LEASE_MARGIN)
            hook = (await self.storage.webhooks_by_id([hook_id])).get(hook_id)
            if hook is None:
                continue  # deleted meanwhile: its calls went with it
            for call in calls:
                self._start_call(hook, call)
        # Later calls: when the next one is due, and every POLL_INTERVAL for other nodes' calls.
        after = await self.storage.next_webhook_call(now)
        self._wake_in(POLL_INTERVAL if after is None else min(POLL_INTERVAL, max(0.0, after - now)))

    def _wake_in(self, seconds: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + seconds:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(seconds, self.wake)

    def _start_call(self, hook: StoredWebhook, call: WebhookCall) -> None:
        self._in_flight[hook.id] = self._in_flight.get(hook.id, 0) + 1
        send = defer.Deferred.fromCoroutine(self._call(hook, call))
        self._sends.add(send)

        def ended(result: Any) -> None:
            self._sends.discard(send)
            self._in_flight[hook.id] -= 1
            if not self._in_flight[hook.id]:
                del self._in_flight[hook.id]
            self.wake()  # a slot is free
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                log.failure("webhooks: call {call} failed", result, call=call.id)

        send.addBoth(ended)

    async def _call(self, hook: StoredWebhook, call: WebhookCall) -> None:
        body = call.payload.encode("utf-8")
        headers = {b"content-type": b"application/json",
                   **signed_headers(call.id, int(self.wall()), body, self.signing_secrets(hook))}
        started = time.monotonic()
        status: int | None = None
        wait: float | None = None
        try:
            answer = await self.client.request(b"POST", hook.url, headers, body,
                                               inside_only=hook.proof == NETWORK)
        except CallError as exc:
            error = str(exc)
        else:
            status, wait = answer.status, answer.retry_after
            error = "" if 200 <= status < 300 else _error_text(status, answer.body)
        result = outcome(call, status, error, wait, self.clock.seconds(), time.monotonic() - started,
                         self.settings.retry_schedule)
        if result.state == CALL_FAILED:
            # Hook ids, not URLs: a receiver's URL may hold its own secret in the query.
            log.info("webhooks: call {call} of webhook {hook} given up after {attempts} attempts: {error}",
                     call=call.id, hook=hook.id, attempts=result.attempt, error=error)
        elif result.disable_hook is not None:
            log.info("webhooks: webhook {hook} answered 410 Gone: disabled", hook=hook.id)
        try:
            await self.storage.record_webhook_result(result)
        except StorageError as exc:
            # The lease runs out and the call is made again: at least once, never lost.
            log.warn("webhooks: cannot record call {call}: {exc}", call=call.id, exc=exc)

    def _prune(self) -> None:
        if not self.running:
            return
        work = self.storage.prune_webhook_history(self.clock.seconds() - HISTORY_SECONDS)
        defer.Deferred.fromCoroutine(work).addErrback(
            lambda failure: log.warn("webhooks: pruning old calls: {error}", error=failure.getErrorMessage()))
        self._prune_timer = self.clock.callLater(PRUNE_INTERVAL, self._prune)


def _error_text(status: int, body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())[:ERROR_TEXT]
    return f"answered {status}" + (f": {text}" if text else "")
