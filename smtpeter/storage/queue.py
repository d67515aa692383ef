"""The queue: messages and their recipients, what the CLI and the API see of
them, the leases delivery claims, and the outcomes it records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ids import new_id
from smtpeter.storage.batching import Batcher
from smtpeter.storage.db import SQL, BulkUpdate, Database, Insert, NotFound, Statement
from smtpeter.storage.events import Events, event_row, insert_events
from smtpeter.storage.keys import address_key, check_id
from smtpeter.storage.models import QUEUED, Lease, NewMessage, Outcome, QueuedRecipient, StoredMessage

log = Logger()

DEFAULT_MAX_DELIVER_TIME = 24 * 3600.0
# A claim that leaves domains out reads around their rows when the rest of the
# queue is smaller than this (see Queue.claim).
CLAIM_BESIDES = 5_000

_OUTCOME_COLUMNS = (
    ("state", "TEXT"), ("attempts", "INTEGER"), ("next_attempt", "DOUBLE PRECISION"),
    ("lease_owner", "TEXT"), ("delay_notified", "INTEGER"), ("last_code", "INTEGER"),
    ("last_status", "TEXT"), ("last_description", "TEXT"), ("last_state", "TEXT"),
    ("updated", "DOUBLE PRECISION"),
)
_QUEUE_COLUMNS = (
    "r.id, r.message_id, r.account_id, r.address, r.state, r.attempts, r.next_attempt, "
    "r.created, m.envelope, m.size, r.last_code, r.last_status, r.last_description, r.last_state, "
    "r.orcpt, r.notify"
)
_MESSAGE_COLUMNS = ("m.id, m.account_id, m.source, m.envelope, m.mime, m.options, m.tags, m.body, "
                    "m.smtputf8, m.dsn_ret, m.dsn_envid, m.created, m.expires")


def _queued(row: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(*row)


def _stored(row: Sequence[Any]) -> StoredMessage:
    envelope = Envelope(row[3], ret=row[9], envid=row[10], smtputf8=bool(row[8]), body=row[7])
    options = MessageOptions(**json.loads(row[5]))
    return StoredMessage(row[0], row[1], row[2], envelope, bytes(row[4]), options, json.loads(row[6]),
                         row[11], row[12])


def _check_accepted(message: NewMessage) -> None:
    if len(message.recipient_ids) != len(message.envelope.recipients):
        raise ValueError("a message is stored with one id per recipient (smtpeter.events.model.accept)")


def _besides(domains: Sequence[str], columns: str, condition: str = "",
             condition_params: Sequence[object] = ()) -> tuple[str, list[object]]:
    """A SELECT of ``columns`` of the queued rows of every domain but ``domains``, and its
    parameters: one range between two of them each, read on the domain index without
    touching theirs (the unary + in a ``condition`` keeps planners off the due index)."""
    bounds = sorted(set(domains))
    ranges, params = [], []
    for low, high in zip([None, *bounds], [*bounds, None], strict=True):
        where = "".join((" AND domain > ?" if low is not None else "",
                         " AND domain < ?" if high is not None else ""))
        ranges.append(f"SELECT {columns} FROM recipients WHERE state = 'queued'{where} {condition}")  # noqa: S608
        params += [*(bound for bound in (low, high) if bound is not None), *condition_params]
    return " UNION ALL ".join(ranges), params


class Queue(Events):
    """Messages, their recipients' delivery state, leases and outcomes.

    Messages and outcomes are written with their events, in one transaction.
    """

    def __init__(self, db: Database, clock: IReactorTime,
                 max_deliver_time: float = DEFAULT_MAX_DELIVER_TIME) -> None:
        super().__init__(db, clock)
        # How long a message without its own expiry (maxdelivertime) is tried.
        self.max_deliver_time = max_deliver_time
        # An item is the list of messages that commit together (one API call's messages).
        self._group_commit = Batcher(
            self, lambda items: self.enqueue_statements([message for item in items for message in item]),
            lambda item: sum(len(message.mime) for message in item), after_commit=self._events_recorded)
        # Outcomes need no fsync of their own (a lost one means a repeated delivery,
        # never a lost message), unless they carry a DSN, which is a new message.
        self._outcomes = Batcher(self, self._outcome_statements,
                                 lambda item: sum(len(notice.mime) for notice in item[2]),
                                 durable=lambda items: any(item[2] for item in items),
                                 after_commit=self._events_recorded)

    async def settle(self) -> None:
        """Wait until every write handed in so far is committed (or failed)."""
        await self._group_commit.idle()
        await self._outcomes.idle()
        if self._group_commit.commits:
            log.info("group commit: {messages} messages stored in {commits} commits",
                     messages=self._group_commit.committed, commits=self._group_commit.commits)

    # -- storing messages -------------------------------------------------------

    def enqueue(self, message: NewMessage) -> defer.Deferred:
        """Store ``message`` and its events durably; fires with its recipients' ids.

        The Deferred fires only after the transaction holding the message is
        committed (and fsynced); it fails with StorageUnavailable otherwise.
        """
        _check_accepted(message)
        return self._group_commit.add([message], list(message.recipient_ids))

    def enqueue_all(self, messages: Sequence[NewMessage]) -> defer.Deferred:
        """Store several messages in one transaction: all of them or none.

        Fires with the recipients' ids, one list per message.
        """
        for message in messages:
            _check_accepted(message)
        return self._group_commit.add(list(messages), [list(m.recipient_ids) for m in messages])

    def enqueue_statements(self, batch: list[NewMessage]) -> list[Insert]:
        now = self.now()
        messages, recipients, events = [], [], []
        for message in batch:
            message_id = new_id()
            expires = message.expires or now + self.max_deliver_time
            envelope = message.envelope
            messages.append((
                message_id, message.account_id, message.source, envelope.sender,
                self.db.blob(message.mime), len(message.mime), json.dumps(message.options.as_dict()),
                json.dumps(message.tags), envelope.body, int(envelope.smtputf8),
                envelope.ret, envelope.envid, now, expires,
            ))
            for rid, rcpt in zip(message.recipient_ids, envelope.recipients, strict=True):
                recipients.append((
                    rid, message_id, message.account_id, rcpt.address,
                    rcpt.address.rpartition("@")[2].lower(), rcpt.orcpt, rcpt.notify,
                    QUEUED, now, now, now,
                ))
            events += [event_row(e.account_id, e.message_id, e.address, e.type, now, e.data)
                       for e in message.events]
        return [
            Insert("messages", ("id", "account_id", "source", "envelope", "mime", "size", "options",
                                "tags", "body", "smtputf8", "dsn_ret", "dsn_envid", "created",
                                "expires"), messages),
            Insert("recipients", ("id", "message_id", "account_id", "address", "domain", "orcpt",
                                  "notify", "state", "next_attempt", "created", "updated"),
                   recipients),
            insert_events(events),
        ]

    # -- what the CLI and the API see ---------------------------------------------

    async def queue(
        self, state: str | None = QUEUED, limit: int = 100, account_id: str | None = None,
        newest_first: bool = False,
    ) -> list[QueuedRecipient]:
        where, params = [], []
        if state:
            where.append("r.state = ?")
            params.append(state)
        if account_id:
            where.append("r.account_id = ?")
            params.append(account_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = await self.db.query(
            f"SELECT {_QUEUE_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id "  # noqa: S608 - clause is built from constants
            # Ids are time-ordered: the newest are found on the primary key without a sort.
            f"{clause} ORDER BY {'r.id DESC' if newest_first else 'r.created, r.id'} LIMIT ?",
            (*params, limit),
        )
        return [_queued(row) for row in rows]

    async def search_messages(self, account_id: str, *, address: str = "", tag: str = "",
                              since: float | None = None, until: float | None = None,
                              limit: int = 100) -> list[QueuedRecipient]:
        """An account's recipients (public message ids), newest first, by address, tag and time."""
        where, params = ["r.account_id = ?"], [account_id]
        if address:
            where.append("LOWER(r.address) = ?")
            params.append(address_key(address))
        if tag:
            # Tags are stored as a JSON list: match one whole element, as json.dumps writes it.
            escaped = json.dumps(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("m.tags LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if since is not None:
            where.append("r.created >= ?")
            params.append(since)
        if until is not None:
            where.append("r.created < ?")
            params.append(until)
        rows = await self.db.query(
            f"SELECT {_QUEUE_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id "  # noqa: S608
            f"WHERE {' AND '.join(where)} ORDER BY r.id DESC LIMIT ?", (*params, limit))
        return [_queued(row) for row in rows]

    async def queue_depth(self) -> int:
        """Recipients still to be delivered (counted on the partial index of the queue)."""
        rows = await self.db.query("SELECT COUNT(*) FROM recipients WHERE state = 'queued'")
        return rows[0][0]

    async def recipient(self, recipient_id: str, account_id: str | None = None) -> QueuedRecipient:
        check_id(recipient_id)
        rows = await self.db.query(
            f"SELECT {_QUEUE_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id "  # noqa: S608
            "WHERE r.id = ?",
            (recipient_id,),
        )
        if not rows or (account_id is not None and rows[0][2] != account_id):
            raise NotFound(f"no message {recipient_id!r}")
        return _queued(rows[0])

    async def message_content(self, recipient_id: str) -> StoredMessage:
        """The message one public message id (a recipient) belongs to."""
        check_id(recipient_id)
        rows = await self.db.query(
            f"SELECT {_MESSAGE_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id "  # noqa: S608
            "WHERE r.id = ?",
            (recipient_id,),
        )
        if not rows:
            raise NotFound(f"no message {recipient_id!r}")
        return _stored(rows[0])

    async def retry_now(self, recipient_id: str | None = None) -> int:
        """Make one waiting recipient (or every one) due now; returns how many.

        Recipients under a lease are left alone: a node is delivering them.
        """
        if recipient_id:
            check_id(recipient_id)
        clause, params = ("AND id = ?", (recipient_id,)) if recipient_id else ("", ())
        rows = await self.db.transaction([SQL(
            "UPDATE recipients SET next_attempt = ? "  # noqa: S608 - clause is a constant
            f"WHERE state = 'queued' AND lease_owner IS NULL {clause} RETURNING id",
            (self.now(), *params))])
        if recipient_id and not rows:
            await self.recipient(recipient_id)  # NotFound if there is no such message
        return len(rows)

    async def retry_domains_now(self, domains: Sequence[str]) -> int:
        """Make every waiting recipient of ``domains`` due now (leased ones are left alone, as
        by retry_now); returns how many."""
        if not domains:
            return 0
        marks = ", ".join("?" * len(domains))
        rows = await self.db.transaction([SQL(
            "UPDATE recipients SET next_attempt = ? "  # noqa: S608 - only placeholders are formatted
            f"WHERE state = 'queued' AND lease_owner IS NULL AND domain IN ({marks}) RETURNING id",
            (self.now(), *domains))])
        return len(rows)

    async def delete_recipient(self, recipient_id: str) -> None:
        """Remove one recipient from the queue; the message goes when its last recipient does."""
        check_id(recipient_id)
        rows = await self.db.transaction([
            SQL("DELETE FROM recipients WHERE id = ? RETURNING message_id", (recipient_id,)),
        ])
        if not rows:
            raise NotFound(f"no message {recipient_id!r}")
        await self.db.transaction([
            SQL("DELETE FROM messages WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM recipients WHERE message_id = ?)", (rows[0][0], rows[0][0])),
        ])

    # -- delivery: leases and outcomes ------------------------------------------

    async def claim(self, owner: str, limit: int, lease: float,
                    exclude_domains: Sequence[str] = ()) -> list[Lease]:
        """Lease up to ``limit`` due recipients for ``owner``, those due longest first.

        A leased row stays "queued" with ``next_attempt`` moved to the lease's
        expiry: no other claim sees it meanwhile, and if this node dies the row
        simply becomes due again.

        Rows of ``exclude_domains`` (busy destinations) can be most of what is
        due, and a claim in due order reads past every one of them. When the
        rest of the queue is small, the claim reads only the rest instead, on
        the queue's domain index, between the excluded domains.
        """
        now = self.now()
        if exclude_domains and await self._few_besides(exclude_domains):
            ranges, params = _besides(exclude_domains, "id, next_attempt", "AND +next_attempt <= ?", (now,))
            return await self._lease(owner, limit, now + lease, (
                f"id IN (SELECT id FROM ({ranges}) AS besides "  # noqa: S608
                "ORDER BY next_attempt LIMIT ?) AND +next_attempt <= ?"), (*params, limit, now),
                order="+next_attempt")
        # Only placeholders and constants are formatted into the statement.
        excluded = f" AND domain NOT IN ({', '.join('?' * len(exclude_domains))})" if exclude_domains else ""
        return await self._lease(owner, limit, now + lease, f"next_attempt <= ?{excluded}",
                                 (now, *exclude_domains))

    async def _few_besides(self, domains: Sequence[str]) -> bool:
        """Whether fewer than CLAIM_BESIDES recipients are queued for other domains
        (reading no more than that many index entries)."""
        ranges, params = _besides(domains, "1")
        rows = await self.db.query(
            f"SELECT COUNT(*) FROM ({ranges} LIMIT ?) AS besides",  # noqa: S608
            (*params, CLAIM_BESIDES))
        return rows[0][0] < CLAIM_BESIDES

    async def _lease(self, owner: str, limit: int, until: float, where: str, params: Sequence[object],
                     order: str = "next_attempt") -> list[Lease]:
        """Lease the first ``limit`` queued rows for which ``where`` holds, until ``until``.

        On PostgreSQL the conditions are checked again on each row as it is
        locked, so two claimers never lease one row; each skips the other's.
        """
        rows = await self.db.transaction([SQL(
            "UPDATE recipients SET lease_owner = ?, next_attempt = ? WHERE id IN ("  # noqa: S608
            f"SELECT id FROM recipients WHERE state = 'queued' AND {where} "
            f"ORDER BY {order} LIMIT ?{self.db.skip_locked}) "
            "RETURNING id, message_id, account_id, address, domain, orcpt, notify, attempts, "
            "delay_notified, created",
            (owner, until, *params, limit),
        )], durable=False)  # a lease lost in a crash only means the work is due again
        return [Lease(r[0], r[1], r[2], Recipient(r[3], r[6], r[5]), r[4], r[7], bool(r[8]), r[9])
                for r in rows]

    async def release_all(self, owner: str) -> None:
        """Make every lease ``owner`` holds due now (a restarting node's leftovers)."""
        await self.db.transaction([SQL(
            "UPDATE recipients SET lease_owner = NULL, next_attempt = ? "
            "WHERE lease_owner = ? AND state = 'queued'", (self.now(), owner))])

    async def release(self, owner: str, recipient_ids: Sequence[str], next_attempt: float) -> None:
        """Hand leased recipients back without an attempt (e.g. their destination is paused)."""
        if not recipient_ids:
            return
        await self.db.transaction([BulkUpdate(
            "recipients", "id", (("lease_owner", "TEXT"), ("next_attempt", "DOUBLE PRECISION")),
            [(rid, None, next_attempt) for rid in recipient_ids],
            where="recipients.lease_owner = ?", where_params=(owner,),
        )], durable=False)

    async def messages(self, message_ids: Sequence[str]) -> dict[str, StoredMessage]:
        found: dict[str, StoredMessage] = {}
        ids = list(dict.fromkeys(message_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self.db.query(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            for row in rows:
                found[row[0]] = _stored(row)
        return found

    def record(self, owner: str, outcomes: list[Outcome],
               notices: Sequence[NewMessage] = ()) -> defer.Deferred:
        """Store attempt outcomes, their events and any DSNs they caused, in one transaction.

        Calls from many deliveries are batched like enqueues. Updates only rows
        ``owner`` still holds, so a node that lost its lease cannot undo newer work.
        """
        for notice in notices:
            _check_accepted(notice)
        return self._outcomes.add((owner, outcomes, list(notices)), None)

    def _outcome_statements(self, batch: list[tuple[str, list[Outcome], list[NewMessage]]]
                            ) -> list[Statement]:
        now = self.now()
        statements: list[Statement] = []
        by_owner: dict[str, list[Outcome]] = {}
        notices: list[NewMessage] = []
        for owner, outcomes, owner_notices in batch:
            by_owner.setdefault(owner, []).extend(outcomes)
            notices.extend(owner_notices)
        events = []
        for owner, outcomes in by_owner.items():
            statements.append(BulkUpdate(
                "recipients", "id", _OUTCOME_COLUMNS,
                [(o.recipient_id, o.state, o.attempts, o.next_attempt, None, int(o.delay_notified),
                  o.code, o.status, o.description, o.smtp_state, now) for o in outcomes],
                where="recipients.lease_owner = ?", where_params=(owner,),
            ))
            events += [event_row(o.account_id, o.recipient_id, o.address, o.event_type, now, o.event)
                       for o in outcomes]
        # An event only for an outcome that took: a node whose lease ran out (and
        # whose work went to another) must not report it twice.
        statements.append(insert_events(
            events, where="EXISTS (SELECT 1 FROM recipients r WHERE r.id = v.column2 AND r.updated = ?)",
            where_params=(now,)))
        if notices:
            statements += self.enqueue_statements(notices)
        return statements
