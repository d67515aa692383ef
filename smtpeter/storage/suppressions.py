"""The suppression list of each account, the hard failures its two-strikes rule counts, and the
one-click unsubscribes that feed it.

An entry names one address of one account: its ``key`` (the whole address in lower case, the
domain as an A-label) is how it is found, since mail operators match local parts without regard
to case; ``address`` keeps the local part as it was given, with the domain in lower case. An
entry whose ``expires`` has passed counts as gone (and is pruned later).

Every change to an account's list moves its revision on (``suppression_revisions``, in the same
transaction), so a node's in-memory copy of the list sees another process's changes (the CLI's)
with one small read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.address import domain_key
from smtpeter.storage.db import SQL, Insert, NotFound, Statement
from smtpeter.storage.events import Events, event_row
from smtpeter.storage.models import NewEvent

_COLUMNS = ("account_id", "address_key", "address", "reason", "source", "created", "expires")
_SELECT = "account_id, address, reason, source, created, expires"
# A row already there: a later entry replaces it, but never shortens a suppression (a permanent
# entry stays permanent; a temporary one only lasts longer).
_EXTEND = ("ON CONFLICT (account_id, address_key) DO UPDATE SET address = excluded.address, "
           "reason = excluded.reason, source = excluded.source, created = excluded.created, "
           "expires = excluded.expires WHERE suppressions.expires IS NOT NULL "
           "AND (excluded.expires IS NULL OR excluded.expires > suppressions.expires)")
_REPLACE = ("ON CONFLICT (account_id, address_key) DO UPDATE SET address = excluded.address, "
            "reason = excluded.reason, source = excluded.source, created = excluded.created, "
            "expires = excluded.expires")
LOOKUP_CHUNK = 500  # addresses per lookup statement


def suppression_key(address: str) -> str:
    """How an address is looked up: local part in lower case, domain as domains are compared."""
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{domain_key(domain)}"


def stored_address(address: str) -> str:
    """An address as the list shows it: the local part as given, the domain in lower case."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower().rstrip('.')}"


@dataclass(frozen=True)
class Suppression:
    account_id: str
    address: str
    reason: str  # userunknown, hardbounce, complaint, unsubscribe, manual, ...
    source: str  # what put it there: the message id of the event, or who added it
    created: float
    expires: float | None = None  # None: until removed

    @property
    def key(self) -> str:
        return suppression_key(self.address)

    def active(self, now: float) -> bool:
        return self.expires is None or self.expires > now


@dataclass(frozen=True)
class Strike:
    """A hard failure of one message to one address, for the rule that two within a window suppress."""

    account_id: str
    key: str
    message_id: str
    time: float


def _suppression(row: Sequence[Any]) -> Suppression:
    return Suppression(*row)


def _lasts(entry: Suppression) -> float:
    return math.inf if entry.expires is None else entry.expires


def _bump(account_ids: Sequence[str]) -> list[SQL]:
    return [SQL("INSERT INTO suppression_revisions (account_id, revision) VALUES (?, 1) "
                "ON CONFLICT (account_id) DO UPDATE SET revision = suppression_revisions.revision + 1",
                (account_id,)) for account_id in sorted(set(account_ids))]


def add_suppressions(entries: Sequence[Suppression], replace: bool = False) -> list[Statement]:
    """The statements that add ``entries`` (for a transaction of the caller's, as the feed consumer's),
    with their accounts' revisions. Without ``replace`` an entry there already is only lengthened."""
    unique: dict[tuple[str, str], Suppression] = {}  # one row per key: ON CONFLICT touches a row once
    for entry in entries:
        kept = unique.get((entry.account_id, entry.key))
        if replace or kept is None or _lasts(entry) >= _lasts(kept):
            unique[entry.account_id, entry.key] = entry
    if not unique:
        return []
    rows = [(e.account_id, e.key, stored_address(e.address), e.reason, e.source, e.created, e.expires)
            for e in unique.values()]
    return [Insert("suppressions", _COLUMNS, rows, suffix=_REPLACE if replace else _EXTEND),
            *_bump([e.account_id for e in unique.values()])]


def add_strikes(strikes: Sequence[Strike], forget_before: float) -> list[Statement]:
    """The statements that keep ``strikes`` and forget those older than any window can reach."""
    rows = [(s.account_id, s.key, s.message_id, s.time) for s in strikes]
    return [Insert("suppression_strikes", ("account_id", "address_key", "message_id", "time"), rows,
                   suffix="ON CONFLICT DO NOTHING"),
            SQL("DELETE FROM suppression_strikes WHERE time < ?", (forget_before,))]


class Suppressions(Events):
    """The accounts' suppression lists."""

    async def add_suppression(self, entry: Suppression, replace: bool = True) -> Suppression:
        """Add (or with ``replace``, overwrite) an entry; returns the entry as it now stands."""
        await self.db.transaction(add_suppressions([entry], replace))
        return await self.suppression(entry.account_id, entry.address)

    async def suppression(self, account_id: str, address: str) -> Suppression:
        """The account's active entry for ``address``; NotFound when there is none."""
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM suppressions WHERE account_id = ? AND address_key = ? "  # noqa: S608
            "AND (expires IS NULL OR expires > ?)", (account_id, suppression_key(address), self.now()))
        if not rows:
            raise NotFound(f"{address!r} is not on the suppression list")
        return _suppression(rows[0])

    async def suppressions(self, account_id: str, limit: int | None = None,
                           after: str = "") -> list[Suppression]:
        """The account's active entries by address (those after the address ``after``, if given)."""
        params: list[object] = [account_id, suppression_key(after) if after else "", self.now()]
        if limit is not None:
            params.append(limit)
        bound = " LIMIT ?" if limit is not None else ""
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM suppressions WHERE account_id = ? AND address_key > ? "  # noqa: S608
            f"AND (expires IS NULL OR expires > ?) ORDER BY address_key{bound}", params)
        return [_suppression(row) for row in rows]

    async def remove_suppression(self, account_id: str, address: str) -> None:
        """Take ``address`` off the account's list; NotFound when it is not on it."""
        rows = await self.db.transaction([
            *_bump([account_id]),
            SQL("DELETE FROM suppressions WHERE account_id = ? AND address_key = ? "
                "AND (expires IS NULL OR expires > ?) RETURNING address_key",
                (account_id, suppression_key(address), self.now())),
        ])
        if not rows:
            raise NotFound(f"{address!r} is not on the suppression list")

    async def suppressed(self, account_id: str, addresses: Sequence[str]) -> dict[str, Suppression]:
        """The account's active entries for any of ``addresses``, by key."""
        keys = sorted({suppression_key(address) for address in addresses})
        found: dict[str, Suppression] = {}
        now = self.now()
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start:start + LOOKUP_CHUNK]
            rows = await self.db.query(
                f"SELECT {_SELECT} FROM suppressions WHERE account_id = ? "  # noqa: S608
                f"AND address_key IN ({', '.join('?' * len(chunk))}) AND (expires IS NULL OR expires > ?)",
                (account_id, *chunk, now))
            for row in rows:
                entry = _suppression(row)
                found[entry.key] = entry
        return found

    async def suppression_revisions(self, account_ids: Sequence[str]) -> dict[str, int]:
        """How often each account's list has changed (0: never)."""
        if not account_ids:
            return {}
        rows = await self.db.query(
            "SELECT account_id, revision FROM suppression_revisions "  # noqa: S608
            f"WHERE account_id IN ({', '.join('?' * len(account_ids))})", tuple(account_ids))
        found = dict.fromkeys(account_ids, 0)
        found.update({row[0]: row[1] for row in rows})
        return found

    async def prune_suppressions(self) -> None:
        """Forget entries whose time is up (already ignored everywhere)."""
        await self.db.transaction([SQL("DELETE FROM suppressions WHERE expires <= ?", (self.now(),))],
                                  durable=False)

    async def strikes(self, account_id: str, keys: Sequence[str], since: float) -> list[Strike]:
        """Hard failures to ``keys`` of the account since ``since``."""
        found: list[Strike] = []
        unique = sorted(set(keys))
        for start in range(0, len(unique), LOOKUP_CHUNK):
            chunk = unique[start:start + LOOKUP_CHUNK]
            rows = await self.db.query(
                "SELECT account_id, address_key, message_id, time FROM suppression_strikes "  # noqa: S608
                f"WHERE account_id = ? AND address_key IN ({', '.join('?' * len(chunk))}) AND time >= ?",
                (account_id, *chunk, since))
            found += [Strike(*row) for row in rows]
        return found

    async def record_unsubscribe(self, event: NewEvent) -> bool:
        """Record a recipient's unsubscribe event, once: False when its message id has one already."""
        row = event_row(event.account_id, event.message_id, event.address, event.type, self.now(), event.data)
        rows = await self.db.transaction([SQL(
            "INSERT INTO events (account_id, message_id, recipient, type, time, day, data) "
            "SELECT ?, ?, ?, ?, CAST(? AS DOUBLE PRECISION), CAST(? AS INTEGER), ? "
            "WHERE NOT EXISTS (SELECT 1 FROM events WHERE message_id = ? AND type = ?) RETURNING id",
            (*row, event.message_id, event.type))])
        if rows:
            self._events_recorded()
        return bool(rows)
