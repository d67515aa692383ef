"""The suppression list as delivery, the REST API and the CLI use it.

Delivery asks ``SuppressionList.suppressed`` for every claimed batch, so the answer comes from
memory: each account's active entries are kept (up to ``MAX_CACHED``; an account with more is
asked of the database per batch). Writes made through this object, and those of the rules in
this process, drop the account's copy at once; writes of other processes (the CLI, other nodes)
are seen within ``CHECK_INTERVAL`` seconds, when the account's revision is read again.

A suppressed recipient fails at delivery, before any connection: ``result`` is what it gets
instead of an attempt (SMTPeter's state ``suppression``, 550 5.7.1, the reason in the text).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter.attempt import RecipientResult
from smtpeter.config import Config
from smtpeter.events.model import SUPPRESSION
from smtpeter.storage import Storage
from smtpeter.storage.suppressions import Suppression, suppression_key
from smtpeter.suppressions.rules import RuleSettings, SuppressionRules

log = Logger()

CHECK_INTERVAL = 1.0  # seconds an account's copy is used before its revision is read again
MAX_CACHED = 100_000  # entries of one account kept in memory
PRUNE_INTERVAL = 3600.0


@dataclass
class _Copy:
    revision: int
    checked: float
    entries: dict[str, Suppression] | None  # by key; None: too many to keep


def result(address: str, entry: Suppression) -> RecipientResult:
    """What a suppressed recipient gets instead of a delivery attempt."""
    since = datetime.datetime.fromtimestamp(entry.created, datetime.UTC).strftime("%Y-%m-%d")
    return RecipientResult(address, SUPPRESSION, 550, "5.7.1",
                           f"recipient address is on the suppression list ({entry.reason} since {since}): "
                           "not sent", permanent=True)


class SuppressionList:
    """Lookups for delivery (cached per account) and the writes that must be seen at once."""

    def __init__(self, storage: Storage, clock: IReactorTime) -> None:
        self.storage = storage
        self.clock = clock
        self._copies: dict[str, _Copy] = {}

    async def suppressed(self, account_id: str, addresses: Sequence[str]) -> dict[str, Suppression]:
        """The active entries for any of ``addresses``, by the address as given."""
        now = self.clock.seconds()
        copy = self._copies.get(account_id)
        if copy is None or now >= copy.checked + CHECK_INTERVAL:
            copy = await self._refresh(account_id, copy, now)
        if copy.entries is None:
            found = await self.storage.suppressed(account_id, addresses)
            return {address: found[suppression_key(address)] for address in addresses
                    if suppression_key(address) in found}
        if not copy.entries:
            return {}
        matches = {}
        for address in addresses:
            entry = copy.entries.get(suppression_key(address))
            if entry is not None and entry.active(now):
                matches[address] = entry
        return matches

    async def _refresh(self, account_id: str, copy: _Copy | None, now: float) -> _Copy:
        revision = (await self.storage.suppression_revisions([account_id]))[account_id]
        if copy is not None and copy.revision == revision:
            copy.checked = now
            return copy
        # Read after the revision: the entries are at least as new as the revision they are kept under.
        rows = await self.storage.suppressions(account_id, limit=MAX_CACHED + 1)
        entries = None if len(rows) > MAX_CACHED else {entry.key: entry for entry in rows}
        copy = self._copies[account_id] = _Copy(revision, now, entries)
        return copy

    def changed(self, account_ids: set[str]) -> None:
        """These accounts' lists changed in this process: read them again on the next lookup."""
        for account_id in account_ids:
            self._copies.pop(account_id, None)

    # -- writes (REST, CLI) ---------------------------------------------------------------------

    async def add(self, entry: Suppression) -> Suppression:
        try:
            return await self.storage.add_suppression(entry)
        finally:
            self.changed({entry.account_id})

    async def remove(self, account_id: str, address: str) -> None:
        try:
            await self.storage.remove_suppression(account_id, address)
        finally:
            self.changed({account_id})


class SuppressionService:
    """The list and the rules that fill it, as the service runs them."""

    def __init__(self, storage: Storage, clock: IReactorTime, settings: RuleSettings) -> None:
        self.list = SuppressionList(storage, clock)
        self.rules = SuppressionRules(storage, clock, settings, changed=self.list.changed)
        self.storage = storage
        self.clock = clock
        self._prune_timer: Any = None

    @classmethod
    def for_config(cls, storage: Storage, config: Config, clock: IReactorTime) -> SuppressionService:
        expiry = config.suppression.hardbounce_expiry
        return cls(storage, clock, RuleSettings(config.suppression.hard_failure_window, expiry or None))

    def start(self) -> None:
        self.rules.start()
        self._prune()

    async def stop(self) -> None:
        if self._prune_timer is not None and self._prune_timer.active():
            self._prune_timer.cancel()
        await self.rules.stop()

    def _prune(self) -> None:
        defer.Deferred.fromCoroutine(self.storage.prune_suppressions()).addErrback(
            lambda failure: log.warn("suppressions: pruning expired entries: {error}",
                                     error=failure.getErrorMessage()))
        self._prune_timer = self.clock.callLater(PRUNE_INTERVAL, self._prune)
