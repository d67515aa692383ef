"""What the operator's dashboard reads and keeps: admin logins, every account's figures, the
queue by receiving domain.

Admin logins are made with ``smtpeter admin create``: a generated password shown once and
stored as an scrypt hash, as SMTP logins' are (``credentials.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.threads import deferToThread

from smtpeter import credentials
from smtpeter.ids import new_secret
from smtpeter.storage.dashboard import MINUTE, admin_credential
from smtpeter.storage.db import SQL, Conflict, NotFound, Tables


@dataclass(frozen=True)
class AccountFigures:
    id: str
    name: str
    queued: int  # recipients still to be delivered
    delivered: int  # recipients delivered since the time asked for (event counts: people and bots alike)
    domains: int  # sender domains


@dataclass(frozen=True)
class DomainQueue:
    domain: str
    waiting: int  # recipients queued for it
    oldest: float  # when the oldest of them was accepted


@dataclass(frozen=True)
class LastError:
    time: float
    text: str  # the remote reply (or why there was none), as delivery recorded it


class Operator(Tables):
    # -- admin logins ---------------------------------------------------------------------

    async def create_admin_login(self, name: str) -> str:
        """Create an operator's dashboard login; returns its generated password (shown once)."""
        password = new_secret(24)
        password_hash = await deferToThread(credentials.hash_password, password)
        try:
            await self.db.transaction([SQL(
                "INSERT INTO admin_logins (name, password_hash, created) VALUES (?, ?, ?)",
                (name, password_hash, self.now()))])
        except Conflict:
            raise Conflict(f"an admin login named {name!r} already exists") from None
        return password

    async def admin_password_hash(self, name: str) -> str | None:
        rows = await self.db.query("SELECT password_hash FROM admin_logins WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    async def admin_logins(self) -> list[tuple[str, float]]:
        """(name, created) of every admin login, by name."""
        rows = await self.db.query("SELECT name, created FROM admin_logins ORDER BY name")
        return [(row[0], row[1]) for row in rows]

    async def delete_admin_login(self, name: str) -> None:
        """Remove an admin login, and end the dashboard sessions made with it."""
        rows = await self.db.transaction([
            SQL("DELETE FROM dashboard_sessions WHERE credential = ?", (admin_credential(name),)),
            SQL("DELETE FROM admin_logins WHERE name = ? RETURNING name", (name,)),
        ])
        if not rows:
            raise NotFound(f"no admin login {name!r}")

    # -- every account's figures ------------------------------------------------------------

    async def account_figures(self, since: float) -> list[AccountFigures]:
        """Each account with its queued recipients, its deliveries since ``since`` and its
        sender domains, by name. Three grouped reads, not one per account."""
        accounts = await self.db.query("SELECT id, name FROM accounts ORDER BY name")
        queued = dict(await self.db.query(
            "SELECT account_id, COUNT(*) FROM recipients WHERE state = 'queued' GROUP BY account_id"))
        delivered = dict(await self.db.query(
            "SELECT account_id, SUM(count) FROM event_counts WHERE minute >= ? AND series = 'delivered' "
            "GROUP BY account_id", (int(since // MINUTE),)))
        domains = dict(await self.db.query(
            "SELECT account_id, COUNT(*) FROM sender_domains GROUP BY account_id"))
        return [AccountFigures(id, name, int(queued.get(id, 0)), int(delivered.get(id, 0)),
                               int(domains.get(id, 0))) for id, name in accounts]

    # -- the queue by receiving domain ----------------------------------------------------

    async def queue_by_domain(self, limit: int = 200) -> list[DomainQueue]:
        """The domains with the most recipients queued, with the oldest one's age."""
        rows = await self.db.query(
            "SELECT domain, COUNT(*) AS waiting, MIN(created) FROM recipients WHERE state = 'queued' "
            "GROUP BY domain ORDER BY waiting DESC, domain LIMIT ?", (limit,))
        return [DomainQueue(row[0], int(row[1]), row[2]) for row in rows]

    async def last_errors(self, domains: Sequence[str]) -> dict[str, LastError]:
        """The latest reply recorded for a recipient still queued, per domain (those that have one)."""
        found = {}
        for domain in domains:
            rows = await self.db.query(
                "SELECT updated, last_description FROM recipients WHERE state = 'queued' AND domain = ? "
                "AND last_description IS NOT NULL ORDER BY updated DESC LIMIT 1", (domain,))
            if rows:
                found[domain] = LastError(rows[0][0], rows[0][1])
        return found
