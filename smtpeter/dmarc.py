"""A DMARC aggregate report that arrived at our report address, kept for the account it is about.

The receiver's processor calls one of these for a message sent to ``domains.dmarc_address``:

* ``receive_dmarc_report(storage, raw, received)`` parses and stores it in a transaction of its
  own;
* ``dmarc_report_statements(storage, raw, received)`` parses it and answers the statements that
  store it, for the processor to commit in the same transaction as its own (marking the received
  message processed), so a crash between the two can neither lose nor repeat it.

Both raise ``NotADmarcReport`` (smtpeter.bounces.dmarc) when the message is none: the caller logs
it and keeps the raw message. A report about a domain that is no account's approved sender domain
(nor under one) is not stored: its receipt says ``UNOWNED`` and the caller keeps the raw message.

``report_handler(storage)`` wraps the second in the shape of the processor's ``reports`` hook
(``InboundProcessor(..., reports=report_handler(storage))``).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smtpeter.bounces.dmarc import DmarcReport, NotADmarcReport, parse_report
from smtpeter.bounces.processor import ReportHandler, ReportResult
from smtpeter.storage import Storage
from smtpeter.storage.db import Statement
from smtpeter.storage.dmarc import NewDmarcReport
from smtpeter.storage.inbound import InboundMessage

log = Logger()

STORED, DUPLICATE, UNOWNED = "stored", "duplicate", "unowned"


@dataclass(frozen=True)
class DmarcReceipt:
    """What became of a received report: ``outcome`` is STORED, DUPLICATE (the account has it
    already: same reporter and report id) or UNOWNED (no account's domain; ``account_id`` None)."""

    outcome: str
    report: DmarcReport
    account_id: str | None


def new_report(report: DmarcReport) -> NewDmarcReport:
    """A parsed report as storage keeps it."""
    return NewDmarcReport(
        org_name=report.org_name, email=report.email, reporter=report.reporter, report_id=report.report_id,
        begin=report.begin, end=report.end, domain=report.domain,
        sending_domains=";".join(report.sending_domains), messages=report.messages,
        failed_spf=report.failed_spf, failed_dkim=report.failed_dkim, xml=report.xml)


async def _parse_and_own(storage: Storage, raw: bytes) -> tuple[DmarcReport, str | None]:
    # Unpacking and parsing up to 10 MB of XML is work for a thread, not the reactor.
    report = await deferToThread(parse_report, raw)
    return report, await storage.dmarc_report_owner(report.domain)


async def dmarc_report_statements(storage: Storage, raw: bytes,
                                  received: float) -> tuple[DmarcReceipt, list[Statement]]:
    """Parse ``raw`` (the whole received message); the receipt and the statements that store it.

    No statements for an UNOWNED report. The receipt says STORED: a repeat of a report the account
    has is found only when the statements run (they leave it as it is; their rows are empty then).
    Raises NotADmarcReport.
    """
    report, account_id = await _parse_and_own(storage, raw)
    if account_id is None:
        return DmarcReceipt(UNOWNED, report, None), []
    return (DmarcReceipt(STORED, report, account_id),
            storage.dmarc_report_statements(account_id, new_report(report), received))


async def receive_dmarc_report(storage: Storage, raw: bytes, received: float) -> DmarcReceipt:
    """Parse ``raw`` (the whole received message, RFC 5322 bytes) and keep the report for the
    account whose sender domain it is about; ``received`` (Unix seconds) dates it (the DATE of
    /v1/dmarc and of the dmarc log). Raises NotADmarcReport."""
    report, account_id = await _parse_and_own(storage, raw)
    if account_id is None:
        return DmarcReceipt(UNOWNED, report, None)
    stored = await storage.store_dmarc_report(account_id, new_report(report), received)
    return DmarcReceipt(STORED if stored else DUPLICATE, report, account_id)


def report_handler(storage: Storage) -> ReportHandler:
    """The processor's ``reports`` hook: a message to the report address that holds a report gives
    the statements that store it (none when its domain is no account's) and its summary, with
    ``outcome`` (stored or unowned); one that holds none gives None (the processor classifies it)."""

    async def handle(message: InboundMessage) -> ReportResult | None:
        try:
            receipt, statements = await dmarc_report_statements(storage, message.mime, message.received)
        except NotADmarcReport as exc:
            log.info("received mail {id} to the DMARC report address is no report: {why}", id=message.id,
                     why=str(exc))
            return None
        if receipt.outcome == UNOWNED:
            log.warn("DMARC report {report} from {reporter} is about {domain}, no account's sender domain: "
                     "kept as received mail {id} only", report=receipt.report.report_id,
                     reporter=receipt.report.reporter, domain=receipt.report.domain, id=message.id)
        return ReportResult(receipt.account_id, statements,
                            {"outcome": receipt.outcome, **receipt.report.summary()})

    return handle
