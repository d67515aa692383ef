"""What the dashboard keeps: its log-in sessions, and the event counts its charts draw.

A session row holds the hash of the cookie's secret (never the secret), the
account it is for (none for an operator's session), its CSRF token and when it
ends. Event counts are per account, minute, chart series and bot flag; the
statistics consumer of the event feed (``events/statistics.py``) adds to them in
the transaction that saves its feed position, so every event is counted once.
Bounce counts are per account, bucket (a minute's and a day's row for each
event), kind, reason, receiving domain and hard flag, kept the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from smtpeter import credentials
from smtpeter.storage.db import SQL, Insert, Statement, Tables

MINUTE = 60
DAY = 86400
BOUNCE_SPANS = (MINUTE, DAY)  # bounce counts are kept per minute and per day


@dataclass(frozen=True)
class DashboardSession:
    account_id: str | None  # None: an operator's session
    admin: bool
    csrf: str
    expires: float


class BounceCount(NamedTuple):
    start: int  # the bucket's first second
    kind: str  # "bounce" (came back) or "failure" (refused or expired while delivering)
    reason: str
    domain: str  # the recipient's
    hard: bool
    count: int


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


# What a session was made with, so that revoking it ends the session too.
ADMIN_TOKEN_CREDENTIAL = "admin-token"  # noqa: S105 - a label, not a secret


TOKEN_PREFIX = "token:"  # noqa: S105 - then the token's hash, as api_tokens keeps it


def token_credential(token: str) -> str:
    return TOKEN_PREFIX + credentials.hash_token(token)


def login_credential(username: str) -> str:
    return "login:" + username


def admin_credential(name: str) -> str:
    return "admin:" + name


class Dashboard(Tables):
    # -- sessions -------------------------------------------------------------------------

    async def create_dashboard_session(self, secret: str, account_id: str | None, admin: bool, csrf: str,
                                       lifetime: float, credential: str) -> None:
        """A session for ``account_id`` (None and ``admin``: an operator's), made with ``credential``
        (see ``credential_*``): revoking that credential ends it."""
        now = self.now()
        await self.db.transaction([
            SQL("DELETE FROM dashboard_sessions WHERE expires < ?", (now,)),
            SQL("INSERT INTO dashboard_sessions (id_hash, account_id, admin, csrf, created, expires, "
                "credential) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_hash(secret), account_id, int(admin), csrf, now, now + lifetime, credential)),
        ])

    async def dashboard_session(self, secret: str) -> DashboardSession | None:
        """The live session whose cookie secret this is, if any."""
        rows = await self.db.query(
            "SELECT account_id, admin, csrf, expires FROM dashboard_sessions "
            "WHERE id_hash = ? AND expires > ?",
            (_hash(secret), self.now()))
        return DashboardSession(rows[0][0], bool(rows[0][1]), rows[0][2], rows[0][3]) if rows else None

    async def end_dashboard_session(self, secret: str) -> None:
        await self.db.transaction([SQL("DELETE FROM dashboard_sessions WHERE id_hash = ?", (_hash(secret),))])

    # -- event counts ---------------------------------------------------------------------

    @staticmethod
    def add_event_counts(rows: Sequence[tuple[str, int, str, bool, int]]) -> Statement:
        """Add to the counts: rows of (account, minute, series, bot, count), each key once."""
        return Insert("event_counts", ("account_id", "minute", "series", "bot", "count"),
                      [(a, m, s, int(b), c) for a, m, s, b, c in rows],
                      suffix="ON CONFLICT (account_id, minute, series, bot) "
                             "DO UPDATE SET count = event_counts.count + excluded.count")

    async def event_counts(self, account_id: str | None, since: float, until: float, bucket: int,
                           bots: bool) -> list[tuple[int, str, int]]:
        """(bucket start, series, count) over [since, until), in buckets of ``bucket`` seconds;
        machines' clicks and opens only with ``bots``; every account's with ``account_id`` None."""
        where = ["minute >= ?", "minute < ?"]
        params: list[object] = [int(since // MINUTE), int(until // MINUTE)]
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        if not bots:
            where.append("bot = 0")
        per = max(1, bucket // MINUTE)
        rows = await self.db.query(
            f"SELECT (minute / {per}) * {per * MINUTE} AS start, series, SUM(count) FROM event_counts "  # noqa: S608
            f"WHERE {' AND '.join(where)} GROUP BY start, series ORDER BY start", params)
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    # -- bounce counts --------------------------------------------------------------------

    @staticmethod
    def add_bounce_counts(rows: Sequence[tuple[str, int, int, str, str, str, bool, int]]) -> Statement:
        """Add to the bounce counts: rows of (account, span, start, kind, reason, domain, hard, count),
        each key once."""
        return Insert("bounce_counts", ("account_id", "span", "start", "kind", "reason", "domain", "hard",
                                        "count"),
                      [(a, sp, st, k, r, d, int(h), c) for a, sp, st, k, r, d, h, c in rows],
                      suffix="ON CONFLICT (account_id, span, start, kind, reason, domain, hard) "
                             "DO UPDATE SET count = bounce_counts.count + excluded.count")

    async def bounce_counts(self, account_id: str, since: float, until: float,
                            bucket: int) -> list[BounceCount]:
        """The account's bounce counts over [since, until) in buckets of ``bucket`` seconds: from the
        day rows when a bucket is whole days, else from the minute rows."""
        span = DAY if bucket % DAY == 0 else MINUTE
        per = max(1, bucket // span) * span
        rows = await self.db.query(
            f"SELECT (start / {per}) * {per} AS bucket, kind, reason, domain, hard, SUM(count) "  # noqa: S608
            "FROM bounce_counts WHERE account_id = ? AND span = ? AND start >= ? AND start < ? "
            "GROUP BY bucket, kind, reason, domain, hard ORDER BY bucket",
            (account_id, span, int(since // span) * span, int(until)))
        return [BounceCount(int(r[0]), r[1], r[2], r[3], bool(r[4]), int(r[5])) for r in rows]
