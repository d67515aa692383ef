"""What mx.listen receives: each message stored durably before its ``250``, then processed.

A received message is a row in state ``new`` until the bounce processor has
turned it into events (and forwards, suppressions, DMARC report rows) in one
transaction with marking it ``done``. Processing leases rows as delivery
leases recipients (``next_attempt`` moved to the lease's end), so a node that
dies mid-way leaves its rows due again and nothing is lost or done twice. The
raw MIME stays after processing: the events it made point to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.storage.db import SQL, NotFound, Statement, Tables
from smtpeter.storage.keys import check_id

NEW, DONE, FAILED = "new", "done", "failed"


@dataclass(frozen=True)
class InboundRecipient:
    """One RCPT TO the receiver accepted, and why: the route it matched."""

    address: str
    route: str  # "verp", "report" or "postmaster"
    recipient_id: str | None = None  # the message id a VERP address names

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "route": self.route, "recipient_id": self.recipient_id}


@dataclass(frozen=True)
class InboundMessage:
    id: str
    received: float
    client: str
    helo: str
    tls: bool
    mail_from: str
    recipients: list[InboundRecipient]
    mime: bytes
    state: str
    attempts: int
    kind: str | None
    account_id: str | None
    result: dict[str, Any] | None


_COLUMNS = ("id, received, client, helo, tls, mail_from, recipients, mime, state, attempts, kind, "
            "account_id, result")


def _inbound(row: Sequence[Any]) -> InboundMessage:
    return InboundMessage(
        row[0], row[1], row[2], row[3], bool(row[4]), row[5],
        [InboundRecipient(r["address"], r["route"], r.get("recipient_id")) for r in json.loads(row[6])],
        bytes(row[7]), row[8], row[9], row[10], row[11], json.loads(row[12]) if row[12] else None)


class Inbound(Tables):
    _events_recorded: Callable[[], None]  # the events part's: tells the feed's readers

    async def store_inbound(self, message_id: str, client: str, helo: str, tls: bool, mail_from: str,
                            recipients: Sequence[InboundRecipient], mime: bytes) -> None:
        """Keep a received message durably (committed and flushed before this returns)."""
        now = self.now()
        await self.db.transaction([SQL(
            "INSERT INTO inbound_messages (id, received, client, helo, tls, mail_from, recipients, mime, "
            "size, state, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, now, client, helo, int(tls), mail_from,
             json.dumps([r.as_dict() for r in recipients]), self.db.blob(mime), len(mime), NEW, now))])

    async def claim_inbound(self, owner: str, limit: int, lease: float) -> list[InboundMessage]:
        """Lease up to ``limit`` received messages that are due for processing, oldest first."""
        now = self.now()
        rows = await self.db.transaction([SQL(
            f"UPDATE inbound_messages SET next_attempt = ?, lease_owner = ?, attempts = attempts + 1 "  # noqa: S608
            f"WHERE id IN (SELECT id FROM inbound_messages WHERE state = ? AND next_attempt <= ? "
            f"ORDER BY next_attempt, id LIMIT ?{self.db.skip_locked}) RETURNING {_COLUMNS}",
            (now + lease, owner, NEW, now, limit))], durable=False)
        return sorted((_inbound(row) for row in rows), key=lambda m: m.id)

    def inbound_processed(self, message_id: str, state: str, kind: str, account_id: str | None,
                          result: dict[str, Any]) -> Statement:
        """The statement that closes a received message (to commit with what processing made)."""
        return SQL(
            "UPDATE inbound_messages SET state = ?, kind = ?, account_id = ?, result = ?, processed = ?, "
            "lease_owner = NULL WHERE id = ?",
            (state, kind, account_id, json.dumps(result), self.now(), message_id))

    async def retry_inbound(self, message_id: str, when: float) -> None:
        """Processing failed for a passing reason: try it again at ``when``."""
        await self.db.transaction([SQL(
            "UPDATE inbound_messages SET next_attempt = ?, lease_owner = NULL WHERE id = ? AND state = ?",
            (when, message_id, NEW))], durable=False)

    async def commit_inbound(self, statements: Sequence[Statement]) -> None:
        """Commit what processing made of received messages (events among it), durably."""
        await self.db.transaction(list(statements))
        self._events_recorded()

    async def inbound_message(self, message_id: str, account_id: str | None = None) -> InboundMessage:
        """One received message (with ``account_id``, only if it was found to be that account's)."""
        check_id(message_id)
        rows = await self.db.query(f"SELECT {_COLUMNS} FROM inbound_messages WHERE id = ?",  # noqa: S608
                                   (message_id,))
        if not rows or (account_id is not None and rows[0][11] != account_id):
            raise NotFound(f"no received message {message_id!r}")
        return _inbound(rows[0])

    async def inbound_messages(self, state: str | None = None, limit: int = 100) -> list[InboundMessage]:
        """The newest received messages (in ``state``), for operators."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM inbound_messages {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*params, limit))
        return [_inbound(row) for row in rows]
