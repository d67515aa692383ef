"""DMARC aggregate reports received for the accounts' sender domains.

A report belongs to the account whose approved sender domain it is about (that domain, or the
nearest parent of it that is one); it is kept once per account, reporter and report id, with
the numbers of SMTPeter's ``dmarc`` log and its XML exactly as it came. Asked for by another
account it is not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.storage.db import SQL, NotFound, Statement, Tables

DAY = 86400


@dataclass(frozen=True)
class NewDmarcReport:
    """A report to keep (the parser's DmarcReport, flattened: storage imports no stage)."""

    org_name: str
    email: str
    reporter: str  # the reporter's domain: SMTPeter's FROM
    report_id: str
    begin: int
    end: int
    domain: str  # the domain reported on: SMTPeter's FOR
    sending_domains: str  # header_from domains, ";"-separated
    messages: int
    failed_spf: int
    failed_dkim: int
    xml: bytes


@dataclass(frozen=True)
class StoredDmarcReport:
    """A kept report without its XML, as the ``dmarc`` log lists it."""

    id: int
    account_id: str
    received: float
    org_name: str
    email: str
    reporter: str
    report_id: str
    begin: int
    end: int
    domain: str
    sending_domains: str
    messages: int
    failed_spf: int
    failed_dkim: int


_COLUMNS = ("account_id, received, day, org_name, email, reporter, report_id, begin_time, end_time, domain, "
            "sending_domains, messages, failed_spf, failed_dkim")
_SELECT = ("id, account_id, received, org_name, email, reporter, report_id, begin_time, end_time, domain, "
           "sending_domains, messages, failed_spf, failed_dkim")


def _stored(row: Sequence[Any]) -> StoredDmarcReport:
    return StoredDmarcReport(*row)


def parent_domains(domain: str) -> list[str]:
    """``domain`` and each parent of it with two labels or more, nearest first."""
    labels = domain.lower().strip(".").split(".")
    return [".".join(labels[i:]) for i in range(max(len(labels) - 1, 1))]


class DmarcReports(Tables):
    """Received DMARC aggregate reports, per account."""

    async def dmarc_report_owner(self, domain: str) -> str | None:
        """The account whose approved sender domain ``domain`` is, or is under (the nearest wins)."""
        candidates = parent_domains(domain)
        marks = ", ".join("?" * len(candidates))
        rows = await self.db.query(
            f"SELECT domain, account_id FROM sender_domains WHERE approved = 1 AND domain IN ({marks})",  # noqa: S608
            candidates)
        owners = dict(rows)
        return next((owners[name] for name in candidates if name in owners), None)

    def dmarc_report_statements(self, account_id: str, report: NewDmarcReport,
                                received: float) -> list[Statement]:
        """The statements that keep ``report`` for the account (for a caller's own transaction).

        A report already kept (same account, reporter and report id) is left as it is; the
        statement's rows are the new report's id, none for such a repeat.
        """
        values = (account_id, received, int(received // DAY), report.org_name, report.email, report.reporter,
                  report.report_id, report.begin, report.end, report.domain, report.sending_domains,
                  report.messages, report.failed_spf, report.failed_dkim)
        return [SQL(
            f"INSERT INTO dmarc_reports ({_COLUMNS}, xml) VALUES ({', '.join('?' * (len(values) + 1))}) "  # noqa: S608
            "ON CONFLICT (account_id, reporter, report_id) DO NOTHING RETURNING id",
            (*values, self.db.blob(report.xml)))]

    async def store_dmarc_report(self, account_id: str, report: NewDmarcReport, received: float) -> bool:
        """Keep ``report`` for the account; False if it was kept before (a repeat is not stored twice)."""
        rows = await self.db.transaction(self.dmarc_report_statements(account_id, report, received))
        return bool(rows)

    async def dmarc_days(self, account_id: str) -> list[int]:
        """UTC days (received // 86400) on which the account received reports."""
        rows = await self.db.query(
            "SELECT DISTINCT day FROM dmarc_reports WHERE account_id = ? ORDER BY day", (account_id,))
        return [row[0] for row in rows]

    async def dmarc_reports_on(self, account_id: str, day: int) -> list[StoredDmarcReport]:
        """The reports the account received on ``day``, in the order they came."""
        rows = await self.db.query(
            f"SELECT {_SELECT} FROM dmarc_reports WHERE account_id = ? AND day = ? ORDER BY id",  # noqa: S608
            (account_id, day))
        return [_stored(row) for row in rows]

    async def dmarc_report_xml(self, account_id: str, day: int, reporter: str, domain: str,
                               index: int = 0) -> bytes:
        """The XML of the ``index``-th report (from 0, in the order they came) that ``reporter``
        sent about ``domain`` and the account received on ``day``; NotFound if there is none."""
        if index < 0:
            raise NotFound("no such DMARC report")
        rows = await self.db.query(
            "SELECT xml FROM dmarc_reports WHERE account_id = ? AND day = ? AND reporter = ? AND domain = ? "
            "ORDER BY id LIMIT 1 OFFSET ?", (account_id, day, reporter.lower(), domain.lower(), index))
        if not rows:
            raise NotFound("no such DMARC report")
        return bytes(rows[0][0])
