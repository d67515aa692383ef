"""The storage interface every stage uses, written once over both backends."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smtpeter import credentials
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ids import is_id, new_id, new_secret
from smtpeter.storage.db import SQL, BulkUpdate, Conflict, Database, Insert, Statement, StorageError
from smtpeter.storage.models import (
    Account,
    Event,
    Lease,
    NewMessage,
    Outcome,
    QueuedRecipient,
    SenderDomain,
    SMTPLogin,
    StoredMessage,
)
from smtpeter.storage.schema import migrate

log = Logger()

# Delivery states of a recipient.
QUEUED, DELIVERED, FAILED, EXPIRED = "queued", "delivered", "failed", "expired"
DEFAULT_MAX_DELIVER_TIME = 24 * 3600.0
EVENTS_LIMIT = 10000  # events one query answers at most

_EVENT_COLUMNS = ("account_id", "message_id", "recipient", "type", "time", "day", "data")
DAY = 86400
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


class NotFound(StorageError):
    """No such object (or it belongs to another account)."""


def _queued(row: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(*row)


_MESSAGE_COLUMNS = ("m.id, m.account_id, m.source, m.envelope, m.mime, m.options, m.tags, m.body, "
                    "m.smtputf8, m.dsn_ret, m.dsn_envid, m.created, m.expires")


def _stored(row: Sequence[Any]) -> StoredMessage:
    envelope = Envelope(row[3], ret=row[9], envid=row[10], smtputf8=bool(row[8]), body=row[7])
    options = MessageOptions(**json.loads(row[5]))
    return StoredMessage(row[0], row[1], row[2], envelope, bytes(row[4]), options, json.loads(row[6]),
                         row[11], row[12])


_EVENT_SELECT = "id, account_id, message_id, recipient, type, time, data"


def _event(row: Sequence[Any]) -> Event:
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))


class _Batcher:
    """Collects writes from many callers and commits them together.

    While one commit (and its fsync) is in flight, new items wait in
    ``_pending``; the next commit takes all of them. Throughput then grows with
    concurrency instead of being capped at one fsync per item. ``build`` turns
    a batch of items into the statements of one transaction.
    """

    def __init__(self, storage: Storage, build: Callable[[list[Any]], list[Statement]],
                 size: Callable[[Any], int], max_batch: int = 500, max_bytes: int = 16 * 1024 * 1024,
                 durable: Callable[[list[Any]], bool] = lambda batch: True) -> None:
        self._storage = storage
        self._durable = durable
        self._build = build
        self._size = size
        self._max_batch = max_batch
        # A few big messages make a transaction big enough: PostgreSQL gets each
        # batch as one query text, bytes hex-encoded.
        self._max_bytes = max_bytes
        self._pending: list[tuple[Any, Any, defer.Deferred]] = []
        self._in_flight = 0
        self._scheduled = False
        self._idle_waiters: list[defer.Deferred] = []
        self.commits = 0
        self.committed = 0

    def add(self, item: Any, result: Any) -> defer.Deferred:
        """Queue ``item``; the Deferred fires with ``result`` once it is committed."""
        d: defer.Deferred = defer.Deferred()
        self._pending.append((item, result, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if self._scheduled or not self._pending:
            return
        if self._in_flight >= self._storage.db.max_concurrent_writes:
            return
        self._scheduled = True
        # callLater(0) lets every caller that is ready in this reactor turn join the batch.
        self._storage.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        count, total = 0, 0
        for item, _, _ in self._pending[: self._max_batch]:
            total += self._size(item)
            if count and total > self._max_bytes:
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        if not batch:
            return
        self._in_flight += 1
        d = defer.Deferred.fromCoroutine(self._commit(batch))
        d.addBoth(self._done)
        self._schedule()

    def _done(self, _: object) -> None:
        self._in_flight -= 1
        self._schedule()
        if not self._in_flight and not self._pending:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def idle(self) -> defer.Deferred:
        """Fires once everything handed in so far has been committed (or failed)."""
        if not self._in_flight and not self._pending:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    async def _commit(self, batch: list[tuple[Any, Any, defer.Deferred]]) -> None:
        try:
            items = [item for item, _, _ in batch]
            await self._storage.db.transaction(self._build(items), durable=self._durable(items))
        except Conflict:
            if len(batch) == 1:
                batch[0][2].errback()
                return
            # One bad item must not fail the others: commit them one by one.
            for entry in batch:
                await self._commit([entry])
            return
        except Exception:
            for _, _, d in batch:
                d.errback()
            return
        self.commits += 1
        self.committed += len(batch)
        for _, result, d in batch:
            d.callback(result)


class Storage:
    """Accounts, secrets, sender domains, the queue and events."""

    def __init__(self, db: Database, clock: Any, max_deliver_time: float = DEFAULT_MAX_DELIVER_TIME) -> None:
        self.db = db
        self.clock = clock
        # How long a message without its own expiry (maxdelivertime) is tried.
        self.max_deliver_time = max_deliver_time
        # An item is a list of (message, ids) that commit together (one API call's messages).
        self._group_commit = _Batcher(
            self, lambda items: self._enqueue_statements([pair for item in items for pair in item]),
            lambda item: sum(len(message.mime) for message, _ in item))
        # Outcomes need no fsync of their own (a lost one means a repeated delivery,
        # never a lost message), unless they carry a DSN, which is a new message.
        self._outcomes = _Batcher(self, self._outcome_statements,
                                  lambda item: sum(len(notice.mime) for notice, _ in item[2]),
                                  durable=lambda items: any(item[2] for item in items))

    async def migrate(self) -> int:
        return await migrate(self.db)

    async def close(self) -> None:
        await self._group_commit.idle()
        await self._outcomes.idle()
        if self._group_commit.commits:
            log.info("group commit: {messages} messages stored in {commits} commits",
                     messages=self._group_commit.committed, commits=self._group_commit.commits)
        await self.db.close()

    def now(self) -> float:
        return self.clock.seconds()

    # -- accounts -------------------------------------------------------------

    async def create_account(self, name: str) -> Account:
        account = Account(id=new_id(), name=name, created=self.now())
        try:
            await self.db.transaction(
                [SQL("INSERT INTO accounts (id, name, created) VALUES (?, ?, ?)",
                     (account.id, account.name, account.created))]
            )
        except Conflict:
            raise Conflict(f"an account named {name!r} already exists") from None
        return account

    async def account(self, name_or_id: str) -> Account:
        rows = await self.db.query(
            "SELECT id, name, created FROM accounts WHERE name = ? OR id = ?", (name_or_id, name_or_id)
        )
        if not rows:
            raise NotFound(f"no account {name_or_id!r}")
        return Account(*rows[0])

    async def accounts(self) -> list[Account]:
        rows = await self.db.query("SELECT id, name, created FROM accounts ORDER BY name")
        return [Account(*row) for row in rows]

    # -- API tokens -----------------------------------------------------------

    async def create_api_token(self, account_id: str, description: str = "") -> tuple[str, str]:
        """Return (token id, token); only the token's hash is stored."""
        token_id, token = new_id(), new_secret(32)
        await self.db.transaction(
            [SQL("INSERT INTO api_tokens (id, account_id, token_hash, description, created) "
                 "VALUES (?, ?, ?, ?, ?)",
                 (token_id, account_id, credentials.hash_token(token), description, self.now()))]
        )
        return token_id, token

    async def api_tokens(self, account_id: str) -> list[dict[str, Any]]:
        rows = await self.db.query(
            "SELECT id, description, created, revoked FROM api_tokens WHERE account_id = ? ORDER BY created",
            (account_id,))
        return [{"id": r[0], "description": r[1], "created": r[2], "revoked": r[3]} for r in rows]

    async def revoke_api_token(self, account_id: str, token_id: str) -> None:
        rows = await self.db.transaction([SQL(
            "UPDATE api_tokens SET revoked = ? WHERE id = ? AND account_id = ? AND revoked IS NULL "
            "RETURNING id", (self.now(), token_id, account_id))])
        if not rows:
            raise NotFound(f"no active token {token_id!r} for this account")

    async def account_for_token(self, token: str) -> str | None:
        rows = await self.db.query(
            "SELECT account_id FROM api_tokens WHERE token_hash = ? AND revoked IS NULL",
            (credentials.hash_token(token),),
        )
        return rows[0][0] if rows else None

    # -- SMTP logins ----------------------------------------------------------

    async def create_smtp_login(
        self, account_id: str, username: str, options: MessageOptions | None = None
    ) -> str:
        """Create a login and return its generated password (shown once, stored hashed)."""
        password = new_secret(24)
        password_hash = await deferToThread(credentials.hash_password, password)
        try:
            await self.db.transaction(
                [SQL("INSERT INTO smtp_logins (id, account_id, username, password_hash, options, created) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (new_id(), account_id, username, password_hash,
                      json.dumps((options or MessageOptions()).as_dict()), self.now()))]
            )
        except Conflict:
            raise Conflict(f"the SMTP username {username!r} is taken") from None
        return password

    async def smtp_login(self, username: str) -> SMTPLogin | None:
        rows = await self.db.query(
            "SELECT id, account_id, username, password_hash, options, disabled "
            "FROM smtp_logins WHERE username = ?",
            (username,),
        )
        if not rows:
            return None
        row = rows[0]
        return SMTPLogin(row[0], row[1], row[2], row[3], MessageOptions(**json.loads(row[4])), bool(row[5]))

    # -- sender domains -------------------------------------------------------

    async def add_domain(self, account_id: str, domain: str, approved: bool = False) -> SenderDomain:
        record = SenderDomain(domain.lower(), account_id, approved, secrets.token_hex(10), self.now())
        try:
            await self.db.transaction(
                [SQL("INSERT INTO sender_domains (domain, account_id, approved, validation_token, created) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (record.domain, account_id, int(approved), record.validation_token, record.created))]
            )
        except Conflict:
            raise Conflict(f"the domain {domain!r} is already registered") from None
        return record

    async def approve_domain(self, account_id: str, domain: str) -> None:
        rows = await self.db.transaction(
            [SQL("UPDATE sender_domains SET approved = 1 "
                 "WHERE account_id = ? AND domain = ? RETURNING domain", (account_id, domain.lower()))]
        )
        if not rows:
            raise NotFound(f"no domain {domain!r} for this account")

    async def domains(self, account_id: str) -> list[SenderDomain]:
        rows = await self.db.query(
            "SELECT domain, account_id, approved, validation_token, created FROM sender_domains "
            "WHERE account_id = ? ORDER BY domain",
            (account_id,),
        )
        return [SenderDomain(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    async def approved_domains(self, account_id: str) -> set[str]:
        rows = await self.db.query(
            "SELECT domain FROM sender_domains WHERE account_id = ? AND approved = 1", (account_id,)
        )
        return {row[0] for row in rows}

    # -- the queue ------------------------------------------------------------

    def enqueue(self, message: NewMessage) -> defer.Deferred:
        """Store ``message`` durably; fires with one public message id per recipient.

        The Deferred fires only after the transaction holding the message is
        committed (and fsynced); it fails with StorageUnavailable otherwise.
        """
        ids = [new_id() for _ in message.envelope.recipients]
        return self._group_commit.add([(message, ids)], ids)

    def enqueue_all(self, messages: Sequence[NewMessage]) -> defer.Deferred:
        """Store several messages in one transaction: all of them or none.

        Fires with the recipients' ids, one list per message.
        """
        pairs = [(message, [new_id() for _ in message.envelope.recipients]) for message in messages]
        return self._group_commit.add(pairs, [ids for _, ids in pairs])

    def _enqueue_statements(self, batch: list[tuple[NewMessage, list[str]]]) -> list[Insert]:
        now = self.now()
        messages, recipients, events = [], [], []
        for message, ids in batch:
            message_id = new_id()
            expires = message.expires or now + self.max_deliver_time
            envelope = message.envelope
            options = message.options.as_dict()
            messages.append((
                message_id, message.account_id, message.source, envelope.sender,
                self.db.blob(message.mime), len(message.mime), json.dumps(options),
                json.dumps(message.tags), envelope.body, int(envelope.smtputf8),
                envelope.ret, envelope.envid, now, expires,
            ))
            properties = ";".join(sorted(k for k, v in options.items() if v is True))
            for rid, rcpt in zip(ids, envelope.recipients, strict=True):
                recipients.append((
                    rid, message_id, message.account_id, rcpt.address,
                    rcpt.address.rpartition("@")[2].lower(), rcpt.orcpt, rcpt.notify,
                    QUEUED, now, now, now,
                ))
                events.append((
                    message.account_id, rid, address_key(rcpt.address), "attempt", now, int(now // DAY),
                    json.dumps({"envelope": envelope.sender or "", "recipient": rcpt.address,
                                "properties": properties, "tags": message.tags}),
                ))
        return [
            Insert("messages", ("id", "account_id", "source", "envelope", "mime", "size", "options",
                                "tags", "body", "smtputf8", "dsn_ret", "dsn_envid", "created",
                                "expires"), messages),
            Insert("recipients", ("id", "message_id", "account_id", "address", "domain", "orcpt",
                                  "notify", "state", "next_attempt", "created", "updated"),
                   recipients),
            Insert("events", _EVENT_COLUMNS, events),
        ]

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

    async def queue_depth(self) -> int:
        """Recipients still to be delivered (counted on the partial index of the queue)."""
        rows = await self.db.query("SELECT COUNT(*) FROM recipients WHERE state = 'queued'")
        return rows[0][0]

    async def recipient(self, recipient_id: str, account_id: str | None = None) -> QueuedRecipient:
        _check_id(recipient_id)
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
        _check_id(recipient_id)
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
            _check_id(recipient_id)
        clause, params = ("AND id = ?", (recipient_id,)) if recipient_id else ("", ())
        rows = await self.db.transaction([SQL(
            "UPDATE recipients SET next_attempt = ? "  # noqa: S608 - clause is a constant
            f"WHERE state = 'queued' AND lease_owner IS NULL {clause} RETURNING id",
            (self.now(), *params))])
        if recipient_id and not rows:
            await self.recipient(recipient_id)  # NotFound if there is no such message
        return len(rows)

    async def delete_recipient(self, recipient_id: str) -> None:
        """Remove one recipient from the queue; the message goes when its last recipient does."""
        _check_id(recipient_id)
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
        """Lease up to ``limit`` due recipients for ``owner`` in one statement.

        A leased row stays "queued" with ``next_attempt`` moved to the lease's
        expiry: no other claim sees it meanwhile, and if this node dies the row
        simply becomes due again.
        """
        now = self.now()
        exclude = ""
        if exclude_domains:
            exclude = f" AND domain NOT IN ({', '.join('?' * len(exclude_domains))})"
        # Only placeholders and constants are formatted into the statement.
        rows = await self.db.transaction([SQL(
            "UPDATE recipients SET lease_owner = ?, next_attempt = ? WHERE id IN ("  # noqa: S608
            "SELECT id FROM recipients WHERE state = 'queued' AND next_attempt <= ?"
            f"{exclude} ORDER BY next_attempt LIMIT ?{self.db.skip_locked}) "
            "RETURNING id, message_id, account_id, address, domain, orcpt, notify, attempts, "
            "delay_notified, created",
            (owner, now + lease, now, *exclude_domains, limit),
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
        notice_ids = [(notice, [new_id() for _ in notice.envelope.recipients]) for notice in notices]
        return self._outcomes.add((owner, outcomes, notice_ids), None)

    def _outcome_statements(self, batch: list[tuple[str, list[Outcome], list]]) -> list[Statement]:
        now = self.now()
        statements: list[Statement] = []
        by_owner: dict[str, list[Outcome]] = {}
        notices: list[tuple[NewMessage, list[str]]] = []
        for owner, outcomes, notice_ids in batch:
            by_owner.setdefault(owner, []).extend(outcomes)
            notices.extend(notice_ids)
        events = []
        for owner, outcomes in by_owner.items():
            statements.append(BulkUpdate(
                "recipients", "id", _OUTCOME_COLUMNS,
                [(o.recipient_id, o.state, o.attempts, o.next_attempt, None, int(o.delay_notified),
                  o.code, o.status, o.description, o.smtp_state, now) for o in outcomes],
                where="recipients.lease_owner = ?", where_params=(owner,),
            ))
            events += [(o.account_id, o.recipient_id, address_key(o.address), o.event_type, now,
                        int(now // DAY), json.dumps(o.event)) for o in outcomes]
        # An event only for an outcome that took: a node whose lease ran out (and
        # whose work went to another) must not report it twice.
        statements.append(Insert(
            "events", _EVENT_COLUMNS, events,
            where="EXISTS (SELECT 1 FROM recipients r WHERE r.id = v.column2 AND r.updated = ?)",
            where_params=(now,),
            types=("TEXT", "TEXT", "TEXT", "TEXT", "DOUBLE PRECISION", "INTEGER", "TEXT"),
        ))
        if notices:
            statements += self._enqueue_statements(notices)
        return statements

    # -- events ---------------------------------------------------------------

    async def events(self, message_id: str, account_id: str | None = None) -> list[Event]:
        """Every event of one message (one recipient), oldest first."""
        _check_id(message_id)
        params: tuple = (message_id,)
        clause = ""
        if account_id is not None:
            clause = " AND account_id = ?"
            params = (message_id, account_id)
        rows = await self.db.query(
            f"SELECT {_EVENT_SELECT} FROM events "  # noqa: S608
            f"WHERE message_id = ?{clause} ORDER BY time, id",
            params,
        )
        return [_event(r) for r in rows]

    async def account_events(self, account_id: str, since: float, until: float,
                             types: Sequence[str] = (), recipient: str | None = None,
                             tags: Sequence[str] = (), limit: int = EVENTS_LIMIT) -> list[Event]:
        """An account's events in [since, until), oldest first; optionally only some types,
        one address, or events that carry all of ``tags`` (a superset: check them again)."""
        clause = f" AND type IN ({', '.join('?' * len(types))})" if types else ""
        params: list[object] = [account_id, since, until, *types]
        if recipient is not None:
            clause += " AND recipient = ?"
            params.append(address_key(recipient))
        # Tags sit in the JSON data as strings: an exact, case-sensitive substring
        # search narrows the rows in the database.
        find = "instr(data, ?) > 0" if self.db.dialect == "sqlite" else "strpos(data, ?) > 0"
        for tag in tags:
            clause += f" AND {find}"
            params.append(json.dumps(tag))
        rows = await self.db.query(
            f"SELECT {_EVENT_SELECT} FROM events "  # noqa: S608 - clause holds placeholders only
            f"WHERE account_id = ? AND time >= ? AND time < ?{clause} ORDER BY time, id LIMIT ?",
            (*params, limit),
        )
        return [_event(r) for r in rows]

    async def event_days(self, account_id: str) -> list[int]:
        """UTC days (time // 86400) on which the account has events."""
        rows = await self.db.query(
            "SELECT DISTINCT day FROM events WHERE account_id = ? ORDER BY day", (account_id,))
        return [row[0] for row in rows]

    async def event_types_on(self, account_id: str, day: int) -> list[str]:
        rows = await self.db.query(
            "SELECT DISTINCT type FROM events WHERE account_id = ? AND day = ?", (account_id, day))
        return sorted(row[0] for row in rows)

    async def events_on(self, account_id: str, day: int, types: Sequence[str],
                        limit: int = 1_000_000) -> list[Event]:
        rows = await self.db.query(
            f"SELECT {_EVENT_SELECT} FROM events WHERE account_id = ? AND day = ? "  # noqa: S608
            f"AND type IN ({', '.join('?' * len(types))}) ORDER BY time, id LIMIT ?",
            (account_id, day, *types, limit),
        )
        return [_event(r) for r in rows]


def address_key(address: str) -> str:
    """How events find a recipient: mailbox names are matched without regard to case,
    as every receiving system in practice does (the event data keeps the original)."""
    return address.lower()


def _check_id(recipient_id: str) -> None:
    """Ids from outside (URLs, the CLI) that we cannot have made are simply not found;
    they never reach the database (PostgreSQL refuses NUL in text, for one)."""
    if not is_id(recipient_id):
        raise NotFound(f"no message {recipient_id[:40]!r}")


async def open_storage(url: str, reactor: Any, pool_size: int = 4,
                       max_deliver_time: float = DEFAULT_MAX_DELIVER_TIME) -> Storage:
    """Open (and migrate) the database that ``url`` names; StorageError when that cannot be done."""
    try:
        return await _open_storage(url, reactor, pool_size, max_deliver_time)
    except (OSError, sqlite3.Error) as exc:  # SQLite's own errors when the file cannot be opened at all
        raise StorageError(str(exc)) from exc


async def _open_storage(url: str, reactor: Any, pool_size: int, max_deliver_time: float) -> Storage:
    if url.startswith("sqlite:///"):
        from smtpeter.storage.sqlite import SQLiteDatabase

        db: Database = SQLiteDatabase(url[len("sqlite:///"):] or ":memory:", reactor)
    elif url.startswith(("postgresql://", "postgres://")):
        from smtpeter.storage.postgres import PostgresDatabase

        db = PostgresDatabase(url, reactor, size=pool_size)
    else:
        raise StorageError(f"unsupported storage url {url!r}")
    storage = Storage(db, reactor, max_deliver_time)
    try:
        await storage.migrate()
    except Exception:
        await db.close()
        raise
    return storage
