"""What the dashboard keeps: its log-in sessions, and the event counts its charts draw.

A session row holds the hash of the cookie's secret (never the secret), the
account it is for (none for an operator's session), its CSRF token and when it
ends. Event counts are per account, minute, chart series and bot flag; the
statistics consumer of the event feed (``events/statistics.py``) adds to them in
the transaction that saves its feed position, so every event is counted once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from smtpeter.storage.db import SQL, Insert, Statement, Tables

MINUTE = 60


@dataclass(frozen=True)
class DashboardSession:
    account_id: str | None  # None: an operator's session
    admin: bool
    csrf: str
    expires: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


class Dashboard(Tables):
    # -- sessions -------------------------------------------------------------------------

    async def create_dashboard_session(self, secret: str, account_id: str | None, admin: bool, csrf: str,
                                       lifetime: float) -> None:
        now = self.now()
        await self.db.transaction([
            SQL("DELETE FROM dashboard_sessions WHERE expires < ?", (now,)),
            SQL("INSERT INTO dashboard_sessions (id_hash, account_id, admin, csrf, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_hash(secret), account_id, int(admin), csrf, now, now + lifetime)),
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
