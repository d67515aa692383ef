"""Webhooks: the hooks of each account, the calls made to them (one row per event and hook), and
each attempt at a call with its result.

A hook belongs to one account; asked for by another account it is not found. Its signing secrets
come in and go out sealed (``smtpeter.domains.sealing``): storage never holds one in the clear.
A call row holds the exact body it sends, so every retry sends the same bytes; calls are leased
as recipients are (``next_attempt`` moved to the lease's end), so a node that dies mid-call
leaves them due again. A hook's calls and attempts go when the hook goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.storage.db import SQL, Insert, NotFound, Statement, Tables
from smtpeter.storage.keys import check_id

# A hook's states: until its owner proves control of the URL it gets nothing; a 410 Gone disables it.
PENDING, ACTIVE, DISABLED = "pending", "active", "disabled"
# A call's states: waiting (or in flight), done, given up after the last retry, dropped with its
# hook's disabling.
CALL_PENDING, CALL_DELIVERED, CALL_FAILED, CALL_CANCELLED = "pending", "delivered", "failed", "cancelled"


@dataclass(frozen=True)
class StoredWebhook:
    id: str
    account_id: str
    type: str
    url: str
    state: str
    proof: str | None  # how control of the URL was shown: "network", "file" or "challenge"
    token: str  # names the ownership file
    problem: str  # why it is pending or disabled ("" when it is not)
    sealed_secret: bytes
    sealed_old_secret: bytes | None  # the secret before the last rotation, while it still signs
    old_secret_until: float | None
    active_since: float | None  # events from this time on are its; earlier ones are not
    created: float
    updated: float


@dataclass(frozen=True)
class NewWebhookCall:
    id: str  # the webhook-id header: the same on every retry, for the receiver to drop repeats
    webhook_id: str
    event_id: int
    event_type: str  # the hook's type
    payload: str  # the body, exactly as sent


@dataclass(frozen=True)
class WebhookCall:
    """A call leased for an attempt."""

    id: str
    webhook_id: str
    event_id: int
    event_type: str
    payload: str
    attempts: int  # made before this one
    created: float


@dataclass(frozen=True)
class CallResult:
    """What one attempt at a call came to, and what becomes of the call."""

    call_id: str
    webhook_id: str
    attempt: int  # this attempt's number, from 1
    time: float
    status: int | None  # the HTTP status; None when none came
    duration: float  # seconds
    error: str  # "" after a 2xx
    state: str  # the call's state now
    next_attempt: float
    disable_hook: str | None = None  # the reason, when the receiver answered 410 Gone


@dataclass(frozen=True)
class WebhookAttempt:
    """One attempt as ``GET /v1/webhook/ID/calls`` lists it."""

    call_id: str
    event_id: int
    event_type: str
    attempt: int
    time: float
    status: int | None
    duration: float
    error: str
    call_state: str  # the call's state now
    next_attempt: float | None  # when it is tried again (pending calls only)


_HOOK = ("id, account_id, type, url, state, proof, token, problem, secret, old_secret, old_secret_until, "
         "active_since, created, updated")
_CALL_COLUMNS = ("id", "webhook_id", "event_id", "event_type", "payload", "state", "attempts",
                 "next_attempt", "created", "updated")
_CALL_TYPES = ("TEXT", "TEXT", "BIGINT", "TEXT", "TEXT", "TEXT", "INTEGER", "DOUBLE PRECISION",
               "DOUBLE PRECISION", "DOUBLE PRECISION")


def _hook(row: Sequence[Any]) -> StoredWebhook:
    return StoredWebhook(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], bytes(row[8]),
                         bytes(row[9]) if row[9] is not None else None, row[10], row[11], row[12], row[13])


def insert_webhook_calls(calls: Sequence[NewWebhookCall], now: float) -> Insert:
    """The statement that stores new calls, due now, for hooks still active (for the feed consumer's
    transaction; a call already made for the same event and hook, by another node, is not made twice)."""
    rows = [(c.id, c.webhook_id, c.event_id, c.event_type, c.payload, CALL_PENDING, 0, now, now, now)
            for c in calls]
    return Insert("webhook_calls", _CALL_COLUMNS, rows, types=_CALL_TYPES,
                  where="v.column2 IN (SELECT id FROM webhooks WHERE state = ?) AND NOT EXISTS ("
                        "SELECT 1 FROM webhook_calls c "
                        "WHERE c.webhook_id = v.column2 AND c.event_id = v.column3)",
                  where_params=(ACTIVE,))


class Webhooks(Tables):
    """Webhooks, their calls and the attempts at them."""

    # -- hooks -------------------------------------------------------------------------------------

    async def add_webhook(self, hook: StoredWebhook) -> None:
        await self.db.transaction([SQL(
            f"INSERT INTO webhooks ({_HOOK}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (hook.id, hook.account_id, hook.type, hook.url, hook.state, hook.proof, hook.token, hook.problem,
             self.db.blob(hook.sealed_secret),
             None if hook.sealed_old_secret is None else self.db.blob(hook.sealed_old_secret),
             hook.old_secret_until, hook.active_since, hook.created, hook.updated))])

    async def webhook(self, account_id: str, webhook_id: str) -> StoredWebhook:
        """The account's hook; NotFound for another account's, or none."""
        check_id(webhook_id)
        rows = await self.db.query(
            f"SELECT {_HOOK} FROM webhooks WHERE id = ? AND account_id = ?",  # noqa: S608
            (webhook_id, account_id))
        if not rows:
            raise NotFound(f"no webhook {webhook_id!r} for this account")
        return _hook(rows[0])

    async def webhooks(self, account_id: str) -> list[StoredWebhook]:
        rows = await self.db.query(
            f"SELECT {_HOOK} FROM webhooks WHERE account_id = ? ORDER BY created, id",  # noqa: S608
            (account_id,))
        return [_hook(row) for row in rows]

    async def webhooks_by_id(self, webhook_ids: Sequence[str]) -> dict[str, StoredWebhook]:
        """Hooks of any account by id (the sender's; ids it never made are simply missing)."""
        if not webhook_ids:
            return {}
        rows = await self.db.query(
            f"SELECT {_HOOK} FROM webhooks WHERE id IN ({', '.join('?' * len(webhook_ids))})",  # noqa: S608
            tuple(webhook_ids))
        return {row[0]: _hook(row) for row in rows}

    async def active_webhooks(self, account_ids: Sequence[str]) -> list[StoredWebhook]:
        """The active hooks of these accounts (the feed consumer's, once per batch of events)."""
        if not account_ids:
            return []
        rows = await self.db.query(
            f"SELECT {_HOOK} FROM webhooks WHERE state = ? "  # noqa: S608
            f"AND account_id IN ({', '.join('?' * len(account_ids))})", (ACTIVE, *account_ids))
        return [_hook(row) for row in rows]

    async def webhook_proven(self, webhook_id: str, proof: str, now: float) -> StoredWebhook | None:
        """A pending hook's owner proved control of its URL: it is active from now on. None if the
        hook is not pending (any more): gone, already active, or disabled."""
        rows = await self.db.transaction([SQL(
            "UPDATE webhooks SET state = ?, proof = ?, problem = '', active_since = ?, updated = ? "  # noqa: S608
            f"WHERE id = ? AND state = ? RETURNING {_HOOK}", (ACTIVE, proof, now, now, webhook_id, PENDING))])
        return _hook(rows[0]) if rows else None

    async def webhook_unproven(self, webhook_id: str, problem: str, now: float) -> None:
        """Say why a pending hook is still pending."""
        await self.db.transaction([SQL(
            "UPDATE webhooks SET problem = ?, updated = ? WHERE id = ? AND state = ?",
            (problem, now, webhook_id, PENDING))])

    async def enable_webhook(self, account_id: str, webhook_id: str, now: float) -> StoredWebhook:
        """A disabled hook active again (getting the events from now on); others stay as they are."""
        check_id(webhook_id)
        await self.db.transaction([SQL(
            "UPDATE webhooks SET state = ?, problem = '', active_since = ?, updated = ? "
            "WHERE id = ? AND account_id = ? AND state = ?",
            (ACTIVE, now, now, webhook_id, account_id, DISABLED))])
        return await self.webhook(account_id, webhook_id)

    async def rotate_webhook_secret(self, account_id: str, webhook_id: str, sealed_secret: bytes,
                                    old_until: float, now: float) -> StoredWebhook:
        """A new signing secret; the one it replaces keeps signing too, until ``old_until``."""
        check_id(webhook_id)
        rows = await self.db.transaction([SQL(
            "UPDATE webhooks SET old_secret = secret, old_secret_until = ?, secret = ?, updated = ? "  # noqa: S608
            f"WHERE id = ? AND account_id = ? RETURNING {_HOOK}",
            (old_until, self.db.blob(sealed_secret), now, webhook_id, account_id))])
        if not rows:
            raise NotFound(f"no webhook {webhook_id!r} for this account")
        return _hook(rows[0])

    async def delete_webhook(self, account_id: str, webhook_id: str) -> None:
        """Delete the account's hook with its calls and their attempts."""
        check_id(webhook_id)
        rows = await self.db.transaction([SQL(
            "DELETE FROM webhooks WHERE id = ? AND account_id = ? RETURNING id", (webhook_id, account_id))])
        if not rows:
            raise NotFound(f"no webhook {webhook_id!r} for this account")

    # -- calls -------------------------------------------------------------------------------------

    async def add_webhook_calls(self, calls: Sequence[NewWebhookCall], now: float) -> int:
        """Store calls made outside the feed (a test event), due now; how many were stored (only
        calls to active hooks are)."""
        rows = await self.db.transaction([insert_webhook_calls(calls, now), SQL(
            f"SELECT COUNT(*) FROM webhook_calls WHERE id IN ({', '.join('?' * len(calls))})",  # noqa: S608
            tuple(c.id for c in calls))])
        return int(rows[0][0])

    async def due_webhook_calls(self, now: float) -> dict[str, int]:
        """Active hooks with calls due by ``now``, and how many each has."""
        rows = await self.db.query(
            "SELECT webhook_id, COUNT(*) FROM webhook_calls WHERE state = ? AND next_attempt <= ? "
            "AND webhook_id IN (SELECT id FROM webhooks WHERE state = ?) GROUP BY webhook_id",
            (CALL_PENDING, now, ACTIVE))
        return {row[0]: row[1] for row in rows}

    async def next_webhook_call(self, after: float) -> float | None:
        """When the first pending call due later than ``after`` is due (calls in flight: when their
        lease ends); None if there is none."""
        rows = await self.db.query(
            "SELECT MIN(next_attempt) FROM webhook_calls WHERE state = ? AND next_attempt > ?",
            (CALL_PENDING, after))
        return rows[0][0]

    async def claim_webhook_calls(self, webhook_id: str, owner: str, limit: int, now: float,
                                  until: float) -> list[WebhookCall]:
        """Lease up to ``limit`` of a hook's due calls for ``owner`` until ``until``, oldest due first."""
        rows = await self.db.transaction([SQL(
            "UPDATE webhook_calls SET lease_owner = ?, next_attempt = ? WHERE id IN ("  # noqa: S608
            "SELECT id FROM webhook_calls WHERE webhook_id = ? AND state = ? AND next_attempt <= ? "
            f"ORDER BY next_attempt, event_id LIMIT ?{self.db.skip_locked}) "
            "RETURNING id, webhook_id, event_id, event_type, payload, attempts, created",
            (owner, until, webhook_id, CALL_PENDING, now, limit))], durable=False)  # a lost lease: due again
        calls = [WebhookCall(*row) for row in rows]
        return sorted(calls, key=lambda call: call.event_id)

    async def release_webhook_calls(self, owner: str, now: float) -> None:
        """Make every call ``owner`` holds due now (a restarting node's leftovers)."""
        await self.db.transaction([SQL(
            "UPDATE webhook_calls SET lease_owner = NULL, next_attempt = ? "
            "WHERE lease_owner = ? AND state = ?",
            (now, owner, CALL_PENDING))])

    async def record_webhook_result(self, result: CallResult) -> None:
        """Keep an attempt and what it made of its call, in one transaction; a 410 disables the hook
        and drops its other pending calls with it. Nothing is kept for a hook deleted meanwhile."""
        statements: list[Statement] = [SQL(
            "UPDATE webhook_calls SET state = ?, attempts = ?, next_attempt = ?, lease_owner = NULL, "
            "updated = ? WHERE id = ? AND state = ?",
            (result.state, result.attempt, result.next_attempt, result.time, result.call_id, CALL_PENDING))]
        if result.disable_hook is not None:
            statements += [
                SQL("UPDATE webhooks SET state = ?, problem = ?, updated = ? WHERE id = ?",
                    (DISABLED, result.disable_hook, result.time, result.webhook_id)),
                SQL("UPDATE webhook_calls SET state = ?, lease_owner = NULL, updated = ? "
                    "WHERE webhook_id = ? AND state = ?",
                    (CALL_CANCELLED, result.time, result.webhook_id, CALL_PENDING)),
            ]
        statements.append(SQL(
            "INSERT INTO webhook_attempts (call_id, webhook_id, attempt, time, status, duration, error) "
            "SELECT id, webhook_id, ?, ?, ?, ?, ? FROM webhook_calls WHERE id = ?",
            (result.attempt, result.time, result.status, result.duration, result.error, result.call_id)))
        await self.db.transaction(statements)

    async def webhook_attempts(self, account_id: str, webhook_id: str,
                               limit: int = 100) -> list[WebhookAttempt]:
        """The account's hook's latest attempts, newest first (NotFound for another account's hook)."""
        await self.webhook(account_id, webhook_id)
        rows = await self.db.query(
            "SELECT a.call_id, c.event_id, c.event_type, a.attempt, a.time, a.status, a.duration, a.error, "
            "c.state, c.next_attempt FROM webhook_attempts a JOIN webhook_calls c ON c.id = a.call_id "
            "WHERE a.webhook_id = ? ORDER BY a.time DESC, a.id DESC LIMIT ?", (webhook_id, limit))
        return [WebhookAttempt(*row[:8], row[8], row[9] if row[8] == CALL_PENDING else None) for row in rows]

    async def webhook_call_counts(self, webhook_id: str) -> dict[str, int]:
        """How many of a hook's calls are in each state."""
        rows = await self.db.query(
            "SELECT state, COUNT(*) FROM webhook_calls WHERE webhook_id = ? GROUP BY state", (webhook_id,))
        return {row[0]: row[1] for row in rows}

    async def prune_webhook_history(self, before: float) -> None:
        """Forget finished calls, and attempts, older than ``before``."""
        await self.db.transaction([
            SQL("DELETE FROM webhook_attempts WHERE time < ?", (before,)),
            SQL("DELETE FROM webhook_calls WHERE state <> ? AND updated < ?", (CALL_PENDING, before)),
        ], durable=False)
