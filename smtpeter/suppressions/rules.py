"""Which events put an address on its account's suppression list: the feed consumer ``suppressions``.

* a ``failure`` (a permanent failure at delivery) or a ``bounce`` with status 5.1.1 or reason
  ``userunknown``: one is enough (reason ``userunknown``);
* two hard failures (``hardbounce`` true, from failures or bounces of two different messages)
  to the same address within ``hard_failure_window`` (reason ``hardbounce``); the hard failures are
  kept (``suppression_strikes``) as long as the window reaches back;
* every ``abuse`` event, a complaint (reason ``complaint``);
* every ``unsubscribe`` event (reason ``unsubscribe``).

Entries made for ``hardbounce`` expire after ``hardbounce_expiry`` (a domain that did not exist
may come back); the others last until removed. The entries and the strikes are written in the
transaction that moves the consumer's feed position: after a restart no event is missed and none
is counted twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from smtpeter.events.feed import SERVICE_PACE, NotifyingFeed
from smtpeter.events.model import ABUSE, BOUNCE, FAILURE, UNSUBSCRIBE
from smtpeter.storage import Storage
from smtpeter.storage.db import Statement
from smtpeter.storage.models import Event
from smtpeter.storage.suppressions import Strike, Suppression, add_strikes, add_suppressions, suppression_key

CONSUMER = "suppressions"  # the feed consumer's name
USER_UNKNOWN, HARD_BOUNCE, COMPLAINT, UNSUBSCRIBED, MANUAL = (
    "userunknown", "hardbounce", "complaint", "unsubscribe", "manual")
STRIKES = 2  # hard failures within the window that suppress


@dataclass(frozen=True)
class RuleSettings:
    hard_failure_window: float  # seconds
    hardbounce_expiry: float | None  # seconds an entry for repeated hard failures lasts; None: for good


def _address(event: Event) -> str | None:
    address = event.data.get("recipient") or event.recipient
    return address if isinstance(address, str) and "@" in address else None


def _failed(event: Event) -> bool:
    """A failure or bounce that speaks about the recipient (not an expiry, nor our own suppression)."""
    return event.type == BOUNCE or (event.type == FAILURE and event.data.get("type") == "failed")


def _user_unknown(event: Event) -> bool:
    return event.data.get("status") == "5.1.1" or event.data.get("reason") == USER_UNKNOWN


def judge(events: Sequence[Event], earlier: Sequence[Strike],
          settings: RuleSettings) -> tuple[list[Suppression], list[Strike]]:
    """The entries ``events`` make (in feed order) and the hard failures among them to keep;
    ``earlier`` are the hard failures kept already for their addresses."""
    counted: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # -> message id -> time
    for strike in earlier:
        counted[strike.account_id, strike.key][strike.message_id] = strike.time
    entries: list[Suppression] = []
    strikes: list[Strike] = []
    for event in events:
        address = _address(event)
        if address is None:
            continue
        source = event.message_id or ""
        reason: str | None = None
        expires: float | None = None
        if event.type == ABUSE:
            reason = COMPLAINT
        elif event.type == UNSUBSCRIBE:
            reason = UNSUBSCRIBED
        elif _failed(event) and _user_unknown(event):
            reason = USER_UNKNOWN
        elif _failed(event) and event.data.get("hardbounce") is True and source:
            key = suppression_key(address)
            seen = counted[event.account_id, key]
            if source not in seen:
                seen[source] = event.time
                strikes.append(Strike(event.account_id, key, source, event.time))
            since = event.time - settings.hard_failure_window
            if sum(1 for when in seen.values() if since <= when <= event.time) >= STRIKES:
                reason = HARD_BOUNCE
                if settings.hardbounce_expiry is not None:
                    expires = event.time + settings.hardbounce_expiry
        if reason is not None:
            entries.append(Suppression(event.account_id, address, reason, source, event.time, expires))
    return entries, strikes


class SuppressionRules:
    """The feed consumer that applies the rules; ``changed(account_ids)`` is told once the entries it
    wrote are committed."""

    def __init__(self, storage: Storage, clock: IReactorTime, settings: RuleSettings,
                 changed: Callable[[set[str]], None] = lambda accounts: None) -> None:
        self.storage = storage
        self.clock = clock
        self.settings = settings
        self.changed = changed
        self._written: set[str] = set()  # accounts whose entries the batch in hand writes
        self.feed = NotifyingFeed(storage, CONSUMER, clock, committed=self._committed, pace=SERVICE_PACE)

    def start(self) -> None:
        self.feed.start(self.consume)

    async def stop(self) -> None:
        await self.feed.stop()

    async def consume(self, events: list[Event]) -> Sequence[Statement]:
        """The statements ``events`` call for, for the feed's transaction."""
        relevant = [event for event in events if event.type in (FAILURE, BOUNCE, ABUSE, UNSUBSCRIBE)]
        if not relevant:
            return []
        window = self.settings.hard_failure_window
        hard: dict[str, set[str]] = defaultdict(set)
        first = min(event.time for event in relevant)
        for event in relevant:
            address = _address(event)
            if address is not None and _failed(event) and event.data.get("hardbounce") is True:
                hard[event.account_id].add(suppression_key(address))
        earlier: list[Strike] = []
        for account_id, keys in hard.items():
            earlier += await self.storage.strikes(account_id, sorted(keys), first - window)
        entries, strikes = judge(relevant, earlier, self.settings)
        self._written = {entry.account_id for entry in entries}
        statements = add_suppressions(entries)
        if strikes:
            statements += add_strikes(strikes, self.clock.seconds() - window)
        return statements

    def _committed(self) -> None:
        written, self._written = self._written, set()
        if written:
            self.changed(written)
