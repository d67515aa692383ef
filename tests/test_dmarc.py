"""DMARC aggregate reports: parsed from what reporters send, stored per account, served over REST
and in the ``dmarc`` log file, and read by ``smtpeter dmarc parse``."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import time
import tracemalloc
import zipfile
import zlib
from email.message import EmailMessage
from pathlib import Path

from twisted.internet import utils
from twisted.trial import unittest

from smtpeter.bounces.dmarc import MAX_XML, NotADmarcReport, parse_report, parse_xml, reporter_domain
from smtpeter.dmarc import (
    DUPLICATE,
    STORED,
    UNOWNED,
    dmarc_report_statements,
    new_report,
    receive_dmarc_report,
    report_handler,
)
from smtpeter.events.logfiles import DMARC_COLUMNS
from smtpeter.storage import NotFound
from smtpeter.storage.db import SQL
from smtpeter.storage.inbound import InboundMessage, InboundRecipient
from tests.support.backends import both_backends
from tests.support.harness import Harness
from tests.support.http import Client

FIXTURES = Path(__file__).parent / "fixtures" / "dmarc"
# The dmarc log's columns as smtpeter-api.md §2.7 gives them.
SMTPETER_COLUMNS = ("time organizationName email reportId begin end domain sendingDomain messages failedSpf "
                    "failedDkim").split()
SMTPETER = str(Path(sys.executable).parent / "smtpeter")
DAY = 86400
RECEIVED = 1764720000.0 + 3600  # 2025-12-03 01:00:00 UTC
DATE = "2025-12-03"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def attached(data: bytes, content_type: str = "application/zip", name: str = "report.zip") -> bytes:
    """A message with ``data`` attached, as a reporter would send it."""
    message = EmailMessage()
    message["From"] = "dmarc@reporter.example"
    message["To"] = "dmarc@mx.test"
    message["Subject"] = "Report Domain: example.com"
    message.set_content("A DMARC aggregate report.")
    maintype, subtype = content_type.split("/")
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def other_report(xml: bytes, report_id: str) -> bytes:
    """The same report under another id (a reporter's next one)."""
    start = xml.index(b"<report_id>") + len(b"<report_id>")
    return xml[:start] + report_id.encode() + xml[xml.index(b"</report_id>") :]


def about_nobody() -> bytes:
    """Yahoo's report, about a domain that is no account's."""
    return fixture("yahoo.xml").replace(b"<domain>example.com</domain>", b"<domain>nobody.example</domain>")


def zipped(xml: bytes, name: str = "report.xml") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, xml)
    return buffer.getvalue()


# -- the parser -----------------------------------------------------------------------------------


class ParserTests(unittest.TestCase):
    def test_google_zip(self) -> None:
        report = parse_report(fixture("google.eml"))
        self.assertEqual(
            (report.org_name, report.email, report.report_id, report.reporter),
            ("google.com", "noreply-dmarc-support@google.com", "15183795541370915627", "google.com"),
        )
        self.assertEqual((report.begin, report.end, report.domain), (1764633600, 1764719999, "example.com"))
        self.assertEqual(
            (report.policy.p, report.policy.sp, report.policy.pct, report.policy.adkim, report.policy.aspf),
            ("none", "none", 100, "r", "r"),
        )
        self.assertEqual((report.messages, report.failed_spf, report.failed_dkim), (121, 3, 3))
        self.assertEqual(report.sending_domains, ("example.com",))
        first, second = report.records
        self.assertEqual(
            (first.source_ip, first.count, first.disposition, first.dkim, first.spf),
            ("192.0.2.25", 118, "none", "pass", "pass"),
        )
        self.assertEqual(
            [(a.method, a.domain, a.scope, a.result) for a in first.auth_results],
            [("dkim", "example.com", "smtpeter1", "pass"), ("spf", "bounces.example.com", "", "pass")],
        )
        self.assertEqual((second.source_ip, second.dkim, second.spf), ("198.51.100.7", "fail", "fail"))
        self.assertEqual(report.xml, fixture("google.xml"))

    def test_outlook_gzip(self) -> None:
        report = parse_report(fixture("outlook.eml"))
        self.assertEqual(
            (report.org_name, report.reporter, report.domain),
            ("Enterprise Outlook", "microsoft.com", "news.example.com"),
        )
        self.assertEqual((report.policy.p, report.policy.pct), ("quarantine", 25))
        self.assertEqual((report.messages, report.failed_spf, report.failed_dkim), (42, 42, 2))
        self.assertEqual(report.records[0].envelope_from, "bounces.example.com")
        self.assertEqual(report.records[0].auth_results[1].scope, "mfrom")
        self.assertEqual(report.xml, fixture("outlook.xml"))

    def test_yahoo_gzip_as_octet_stream_in_a_single_part_message(self) -> None:
        report = parse_report(fixture("yahoo.eml"))
        self.assertEqual(
            (report.org_name, report.reporter, report.report_id),
            ("Yahoo", "yahooinc.com", "1764720012.442188"),
        )
        self.assertEqual((report.messages, report.failed_spf, report.failed_dkim), (9, 0, 0))
        self.assertEqual(report.policy.sp, "")  # Yahoo's report has no <sp>
        self.assertEqual(report.xml, fixture("yahoo.xml"))

    def test_mailru_plain_xml_with_a_namespace(self) -> None:
        report = parse_report(fixture("mailru.eml"))
        self.assertEqual(
            (report.org_name, report.reporter, report.domain), ("Mail.Ru", "corp.mail.ru", "shop.example.org")
        )
        self.assertEqual((report.policy.p, report.policy.adkim), ("reject", "s"))
        self.assertEqual((report.messages, report.failed_spf, report.failed_dkim), (6, 6, 1))
        self.assertEqual(report.sending_domains, ("shop.example.org", "mail.shop.example.org"))
        self.assertEqual(report.records[0].source_ip, "2001:db8::25")
        self.assertEqual(report.xml, fixture("mailru.xml"))

    def test_the_report_file_itself_and_a_bare_xml_body(self) -> None:
        xml = fixture("google.xml")
        for data in (xml, gzip.compress(xml), zipped(xml)):
            self.assertEqual(parse_report(data).xml, xml)
        bare = b"From: a@reporter.example\r\nContent-Type: text/xml\r\n\r\n" + xml
        self.assertEqual(parse_report(bare).report_id, "15183795541370915627")
        # Named by its file name only, sent as application/octet-stream: found by its content.
        self.assertEqual(parse_report(attached(zipped(xml), "application/octet-stream", "x.bin")).xml, xml)

    def test_a_zip_takes_its_xml_member(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("README.txt", b"not this")
            archive.writestr("google.com!example.com!1!2.xml", fixture("google.xml"))
        self.assertEqual(parse_report(attached(buffer.getvalue())).messages, 121)

    def test_what_is_not_a_report(self) -> None:
        plain = b"From: a@example.net\r\nSubject: hi\r\n\r\nJust a note.\r\n"
        for message, why in (
            (fixture("not-a-report.eml"), "not a DMARC <feedback>"),
            (plain, "no report attachment"),
            (attached(b"PK\x03\x04 broken"), "zip archive cannot be read"),
            (
                attached(gzip.compress(fixture("google.xml"))[:-20], "application/gzip", "r.xml.gz"),
                "truncated",
            ),
            (attached(b"<?xml version='1.0'?><feedback><oops>", "text/xml", "r.xml"), "malformed"),
            (attached(zipped(b"\x00\x01binary"), "application/zip"), "malformed"),
            (attached(b"\x00\x01binary", "application/octet-stream", "r.xml"), "neither"),
        ):
            with self.assertRaises(NotADmarcReport) as caught:
                parse_report(message)
            self.assertIn(why, str(caught.exception))
        self.assertTrue(issubclass(NotADmarcReport, ValueError))

    def test_incomplete_or_wrong_reports(self) -> None:
        xml = fixture("google.xml")
        for old, new, why in (
            (b"<report_id>15183795541370915627</report_id>", b"", "no <report_id>"),
            (b"<domain>example.com</domain>\n    <adkim>", b"<adkim>", "no <domain>"),
            (b"<count>118</count>", b"<count>many</count>", "not a whole number"),
            (b"<count>118</count>", b"<count>-1</count>", "out of range"),
            (b"<begin>1764633600</begin>", b"<begin>99999999999999</begin>", "out of range"),
            (b"<org_name>google.com</org_name>", b"<org_name>" + b"g" * 2000 + b"</org_name>", "longer than"),
        ):
            with self.assertRaises(NotADmarcReport) as caught:
                parse_xml(xml.replace(old, new, 1))
            self.assertIn(why, str(caught.exception))

    def test_records_are_limited(self) -> None:
        self.assertEqual(len(parse_xml(fixture("google.xml"), max_records=2).records), 2)
        with self.assertRaises(NotADmarcReport) as caught:
            parse_xml(fixture("google.xml"), max_records=1)
        self.assertIn("more than 1 records", str(caught.exception))

    def test_billion_laughs_and_external_entities_are_refused(self) -> None:
        started = time.monotonic()
        with self.assertRaises(NotADmarcReport) as caught:
            parse_report(attached(fixture("billion-laughs.xml"), "text/xml", "report.xml"))
        self.assertIn("refused", str(caught.exception))
        external = (
            b'<?xml version="1.0"?><!DOCTYPE feedback [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<feedback><report_metadata><org_name>&x;</org_name></report_metadata></feedback>"
        )
        with self.assertRaises(NotADmarcReport):
            parse_report(external)
        self.assertLess(time.monotonic() - started, 2)

    def test_zip_and_gzip_bombs_stop_at_the_limit(self) -> None:
        chunk = b"<" + b" " * (1024 * 1024 - 1)  # looks like XML; 64 MB of it
        inflated = 64 * 1024 * 1024
        zip_buffer = io.BytesIO()
        with zipfile.ZipFile(zip_buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open("report.xml", "w") as member:
                for _ in range(inflated // len(chunk)):
                    member.write(chunk)
        deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        gzip_bomb = (
            b"".join(deflater.compress(chunk) for _ in range(inflated // len(chunk))) + deflater.flush()
        )
        for message in (
            attached(zip_buffer.getvalue()),
            attached(gzip_bomb, "application/gzip", "r.xml.gz"),
            gzip_bomb,
        ):
            self.assertLess(len(message), inflated // 100)
            tracemalloc.start()
            try:
                with self.assertRaises(NotADmarcReport) as caught:
                    parse_report(message)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            self.assertIn(f"more than {MAX_XML} bytes", str(caught.exception))
            self.assertLess(peak, 3 * MAX_XML)

    def test_reporter_domains(self) -> None:
        self.assertEqual(reporter_domain("google.com", "noreply-dmarc-support@google.com"), "google.com")
        self.assertEqual(reporter_domain("Enterprise Outlook", "dmarcreport@Microsoft.COM"), "microsoft.com")
        self.assertEqual(reporter_domain("Example.NET", ""), "example.net")
        self.assertEqual(reporter_domain("Some Org", "not an address"), "some-org")


# -- storage, on both backends ----------------------------------------------------------------------


class DmarcStorageSuite:
    async def accounts(self, storage: object) -> tuple[str, str]:
        acme = await storage.create_account("acme")
        other = await storage.create_account("other")
        await storage.add_domain(acme.id, "example.com", approved=True)
        await storage.add_domain(acme.id, "pending.example", approved=False)
        await storage.add_domain(other.id, "shop.example.org", approved=True)
        return acme.id, other.id

    async def test_the_owner_is_the_nearest_approved_sender_domain(self) -> None:
        storage = await self.open_storage()
        acme, other = await self.accounts(storage)
        await storage.add_domain(other, "news.example.com", approved=True)
        self.assertEqual(await storage.dmarc_report_owner("example.com"), acme)
        self.assertEqual(await storage.dmarc_report_owner("Mail.Example.COM."), acme)
        self.assertEqual(await storage.dmarc_report_owner("news.example.com"), other)
        self.assertEqual(await storage.dmarc_report_owner("a.news.example.com"), other)
        self.assertEqual(await storage.dmarc_report_owner("mail.shop.example.org"), other)
        self.assertIsNone(await storage.dmarc_report_owner("pending.example"))  # not approved
        self.assertIsNone(await storage.dmarc_report_owner("example.net"))
        self.assertIsNone(await storage.dmarc_report_owner("com"))

    async def test_kept_once_per_account_reporter_and_id(self) -> None:
        storage = await self.open_storage()
        acme, other = await self.accounts(storage)
        google = new_report(parse_report(fixture("google.eml")))
        self.assertTrue(await storage.store_dmarc_report(acme, google, RECEIVED))
        self.assertFalse(await storage.store_dmarc_report(acme, google, RECEIVED + DAY))
        yahoo = new_report(parse_report(fixture("yahoo.eml")))
        # Another reporter may use the same id; another account may have the same report.
        self.assertTrue(
            await storage.store_dmarc_report(
                acme, yahoo.__class__(**{**yahoo.__dict__, "report_id": google.report_id}), RECEIVED
            )
        )
        self.assertTrue(await storage.store_dmarc_report(other, google, RECEIVED))
        rows = await storage.dmarc_reports_on(acme, int(RECEIVED // DAY))
        self.assertEqual(
            [(r.reporter, r.report_id) for r in rows],
            [("google.com", google.report_id), ("yahooinc.com", google.report_id)],
        )
        self.assertEqual(await storage.dmarc_days(acme), [int(RECEIVED // DAY)])
        first = rows[0]
        self.assertEqual(
            (
                first.account_id,
                first.received,
                first.org_name,
                first.email,
                first.begin,
                first.end,
                first.domain,
                first.sending_domains,
                first.messages,
                first.failed_spf,
                first.failed_dkim,
            ),
            (
                acme,
                RECEIVED,
                "google.com",
                "noreply-dmarc-support@google.com",
                1764633600,
                1764719999,
                "example.com",
                "example.com",
                121,
                3,
                3,
            ),
        )

    async def test_xml_by_day_reporter_domain_and_index(self) -> None:
        storage = await self.open_storage()
        acme, other = await self.accounts(storage)
        xml = fixture("google.xml")
        day = int(RECEIVED // DAY)
        for number, received in enumerate((RECEIVED, RECEIVED + 60, RECEIVED + DAY)):
            report = parse_report(other_report(xml, f"id-{number}"))
            await storage.store_dmarc_report(acme, new_report(report), received)
        self.assertEqual(
            await storage.dmarc_report_xml(acme, day, "google.com", "example.com"), other_report(xml, "id-0")
        )
        self.assertEqual(
            await storage.dmarc_report_xml(acme, day, "GOOGLE.com", "example.com", 1),
            other_report(xml, "id-1"),
        )
        self.assertEqual(
            await storage.dmarc_report_xml(acme, day + 1, "google.com", "example.com", 0),
            other_report(xml, "id-2"),
        )
        for args in (
            (acme, day, "google.com", "example.com", 2),
            (acme, day, "google.com", "example.net", 0),
            (acme, day, "yahooinc.com", "example.com", 0),
            (acme, day, "google.com", "example.com", -1),
            (other, day, "google.com", "example.com", 0),
        ):
            with self.assertRaises(NotFound):
                await storage.dmarc_report_xml(*args)
        self.assertEqual(await storage.dmarc_days(other), [])

    async def test_receive_stores_repeats_and_reports_unowned_domains(self) -> None:
        storage = await self.open_storage()
        acme, other = await self.accounts(storage)
        receipt = await receive_dmarc_report(storage, fixture("google.eml"), RECEIVED)
        self.assertEqual((receipt.outcome, receipt.account_id, receipt.report.messages), (STORED, acme, 121))
        receipt = await receive_dmarc_report(storage, fixture("google.eml"), RECEIVED + 5)
        self.assertEqual((receipt.outcome, receipt.account_id), (DUPLICATE, acme))
        # news.example.com is under acme's example.com; shop.example.org is other's.
        self.assertEqual(
            (await receive_dmarc_report(storage, fixture("outlook.eml"), RECEIVED)).account_id, acme
        )
        self.assertEqual(
            (await receive_dmarc_report(storage, fixture("mailru.eml"), RECEIVED)).account_id, other
        )
        xml = about_nobody()
        receipt = await receive_dmarc_report(
            storage, attached(gzip.compress(xml), "application/gzip", "y.xml.gz"), RECEIVED
        )
        self.assertEqual(
            (receipt.outcome, receipt.account_id, receipt.report.domain), (UNOWNED, None, "nobody.example")
        )
        rows = await storage.db.query("SELECT COUNT(*) FROM dmarc_reports")
        self.assertEqual(rows[0][0], 3)
        with self.assertRaises(NotADmarcReport):
            await receive_dmarc_report(storage, fixture("not-a-report.eml"), RECEIVED)

    async def test_statements_commit_with_the_callers_own(self) -> None:
        storage = await self.open_storage()
        acme, _ = await self.accounts(storage)
        receipt, statements = await dmarc_report_statements(storage, fixture("google.eml"), RECEIVED)
        self.assertEqual((receipt.outcome, receipt.account_id), (STORED, acme))
        await storage.db.transaction([SQL("CREATE TABLE processed (id TEXT)")])
        await storage.db.transaction([*statements, SQL("INSERT INTO processed (id) VALUES ('m1')")])
        self.assertEqual(len(await storage.dmarc_reports_on(acme, int(RECEIVED // DAY))), 1)
        # The same statements again (a repeat) change nothing and give no rows back.
        _, again = await dmarc_report_statements(storage, fixture("google.eml"), RECEIVED + 1)
        self.assertEqual(await storage.db.transaction(again), [])
        self.assertEqual(len(await storage.dmarc_reports_on(acme, int(RECEIVED // DAY))), 1)
        xml = about_nobody()
        receipt, statements = await dmarc_report_statements(storage, xml, RECEIVED)
        self.assertEqual((receipt.outcome, statements), (UNOWNED, []))

    async def test_the_processors_hook(self) -> None:
        storage = await self.open_storage()
        acme, _ = await self.accounts(storage)
        handle = report_handler(storage)

        def received(mime: bytes) -> InboundMessage:
            return InboundMessage(
                id="in-1", received=RECEIVED, client="192.0.2.1", helo="mail.google.com", tls=True,
                mail_from="noreply-dmarc-support@google.com",
                recipients=[InboundRecipient("dmarc@mx.test", "report")], mime=mime, state="new",
                attempts=0, kind=None, account_id=None, result=None)

        found = await handle(received(fixture("google.eml")))
        self.assertEqual((found.account_id, found.summary["outcome"], found.summary["messages"]),
                         (acme, STORED, 121))
        json.dumps(found.summary)  # kept as the received message's result
        await storage.db.transaction(list(found.statements))
        self.assertEqual(len(await storage.dmarc_reports_on(acme, int(RECEIVED // DAY))), 1)
        self.assertIsNone(await handle(received(fixture("not-a-report.eml"))))
        xml = about_nobody()
        unowned = await handle(received(xml))
        self.assertEqual((unowned.account_id, unowned.statements, unowned.summary["outcome"]),
                         (None, [], UNOWNED))

    async def test_reports_go_with_their_account(self) -> None:
        storage = await self.open_storage()
        acme, _ = await self.accounts(storage)
        await receive_dmarc_report(storage, fixture("google.eml"), RECEIVED)
        await storage.db.transaction([SQL("DELETE FROM accounts WHERE id = ?", (acme,))])
        rows = await storage.db.query("SELECT COUNT(*) FROM dmarc_reports")
        self.assertEqual(rows[0][0], 0)


DmarcStorageSQLite, DmarcStoragePostgreSQL = both_backends(DmarcStorageSuite)


# -- REST and the log file -------------------------------------------------------------------------


class RestTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.harness = Harness(self)
        await self.harness.start()
        self.acme = await self.harness.login("acme", domains=("example.com",))
        self.other = await self.harness.login("other", domains=("shop.example.org",))
        self.client = Client(self.harness.http_url, self.acme.token)
        storage = self.harness.storage
        google = fixture("google.xml")
        for message, received in (
            (fixture("google.eml"), RECEIVED),
            (fixture("outlook.eml"), RECEIVED + 60),
            (other_report(google, "second"), RECEIVED + 120),
            (other_report(google, "next-day"), RECEIVED + DAY),
            (fixture("mailru.eml"), RECEIVED),
        ):
            await receive_dmarc_report(storage, message, received)

    async def test_days_and_reports(self) -> None:
        days = await self.client.request("GET", "/v1/dmarc")
        self.assertEqual((days.code, days.json), (200, [DATE, "2025-12-04"]))
        first = await self.client.request("GET", f"/v1/dmarc/{DATE}/google.com/example.com")
        self.assertEqual(
            (first.code, first.content_type, first.body), (200, "application/xml", fixture("google.xml"))
        )
        self.assertEqual(
            (await self.client.request("GET", f"/v1/dmarc/{DATE}/google.com/example.com/0")).body,
            fixture("google.xml"),
        )
        second = await self.client.request("GET", f"/v1/dmarc/{DATE}/google.com/example.com/1")
        self.assertEqual(second.body, other_report(fixture("google.xml"), "second"))
        outlook = await self.client.request("GET", f"/v1/dmarc/{DATE}/microsoft.com/news.example.com")
        self.assertEqual(outlook.body, fixture("outlook.xml"))
        next_day = await self.client.request("GET", "/v1/dmarc/2025-12-04/google.com/example.com")
        self.assertEqual(next_day.body, other_report(fixture("google.xml"), "next-day"))

    async def test_what_is_not_there_is_a_404(self) -> None:
        for path in (
            f"/v1/dmarc/{DATE}/google.com/example.com/2",
            f"/v1/dmarc/{DATE}/google.com/example.com/-1",
            f"/v1/dmarc/{DATE}/google.com/example.com/x",
            f"/v1/dmarc/{DATE}/google.com/example.com/" + "9" * 5000,
            "/v1/dmarc/2025-12-05/google.com/example.com",
            f"/v1/dmarc/{DATE}/yahoo.com/example.com",
            "/v1/dmarc/yesterday/google.com/example.com",
            # Another account's report, asked for by its FROM and FOR.
            f"/v1/dmarc/{DATE}/corp.mail.ru/shop.example.org",
        ):
            answer = await self.client.request("GET", path)
            self.assertEqual((answer.code, answer.error), (404, "Not found"), path)
        unauthorized = await self.client.request("GET", "/v1/dmarc", token=None)
        self.assertEqual(unauthorized.code, 401)

    async def test_accounts_see_their_own_only(self) -> None:
        other = Client(self.harness.http_url, self.other.token)
        self.assertEqual((await other.request("GET", "/v1/dmarc")).json, [DATE])
        mailru = await other.request("GET", f"/v1/dmarc/{DATE}/corp.mail.ru/shop.example.org")
        self.assertEqual(mailru.body, fixture("mailru.xml"))
        self.assertEqual((await other.request("GET", f"/v1/dmarc/{DATE}/google.com/example.com")).code, 404)
        self.assertEqual(
            (await other.request("GET", f"/v1/logfiles/dmarc.{DATE}.log/json")).json,
            [
                {
                    "time": "2025-12-03 01:00:00",
                    "organizationName": "Mail.Ru",
                    "email": "dmarc_support@corp.mail.ru",
                    "reportId": "27461118364317295071764633600",
                    "begin": "2025-12-02 00:00:00",
                    "end": "2025-12-03 00:00:00",
                    "domain": "shop.example.org",
                    "sendingDomain": "shop.example.org;mail.shop.example.org",
                    "messages": 6,
                    "failedSpf": 6,
                    "failedDkim": 1,
                }
            ],
        )

    async def test_the_dmarc_log_file(self) -> None:
        self.assertIn(DATE, (await self.client.request("GET", "/v1/logfiles")).json)
        self.assertIn(f"dmarc.{DATE}.log", (await self.client.request("GET", f"/v1/logfiles/{DATE}")).json)
        with_header = await self.client.request("GET", f"/v1/logfiles/dmarc.{DATE}.log/header")
        self.assertTrue(with_header.content_type.startswith("text/csv"))
        rows = list(csv.reader(io.StringIO(with_header.text)))
        self.assertEqual(rows[0], SMTPETER_COLUMNS)
        self.assertEqual(rows[0], DMARC_COLUMNS)
        self.assertEqual(
            rows[1:],
            [
                [
                    "2025-12-03 01:00:00",
                    "google.com",
                    "noreply-dmarc-support@google.com",
                    "15183795541370915627",
                    "2025-12-02 00:00:00",
                    "2025-12-02 23:59:59",
                    "example.com",
                    "example.com",
                    "121",
                    "3",
                    "3",
                ],
                [
                    "2025-12-03 01:01:00",
                    "Enterprise Outlook",
                    "dmarcreport@microsoft.com",
                    "d7e1c1a4f6a24c0b9a0e2b9f3c5d7e11",
                    "2025-12-02 00:00:00",
                    "2025-12-03 00:00:00",
                    "news.example.com",
                    "news.example.com",
                    "42",
                    "42",
                    "2",
                ],
                [
                    "2025-12-03 01:02:00",
                    "google.com",
                    "noreply-dmarc-support@google.com",
                    "second",
                    "2025-12-02 00:00:00",
                    "2025-12-02 23:59:59",
                    "example.com",
                    "example.com",
                    "121",
                    "3",
                    "3",
                ],
            ],
        )
        plain = await self.client.request("GET", f"/v1/logfiles/dmarc.{DATE}.log")
        self.assertEqual(plain.text, with_header.text.split("\r\n", 1)[1])
        as_json = (await self.client.request("GET", f"/v1/logfiles/dmarc.{DATE}.log/json")).json
        self.assertEqual([list(row) for row in as_json], [DMARC_COLUMNS] * 3)
        as_xml = await self.client.request("GET", f"/v1/logfiles/dmarc.{DATE}.log/xml")
        self.assertEqual(as_xml.content_type, "application/xml")
        self.assertTrue(
            as_xml.text.startswith(
                "<records><record><time>2025-12-03 01:00:00</time>"
                "<organizationName>google.com</organizationName>"
            )
        )
        # A day without reports has an empty dmarc log.
        self.assertEqual(
            (await self.client.request("GET", "/v1/logfiles/dmarc.2025-12-01.log/json")).json, []
        )
        self.assertNotIn(
            "dmarc.2025-12-01.log", (await self.client.request("GET", "/v1/logfiles/2025-12-01")).json
        )


# -- the command line ------------------------------------------------------------------------------


class CommandTests(unittest.TestCase):
    async def test_dmarc_parse(self) -> None:
        files = [
            str(FIXTURES / name) for name in ("google.eml", "outlook.eml", "yahoo.xml", "not-a-report.eml")
        ]
        out, err, code = await utils.getProcessOutputAndValue(
            SMTPETER, ["dmarc", "parse", *files, "--json"], env={}
        )
        self.assertEqual(code, 1, err)  # one file holds no report
        results = json.loads(out)
        self.assertEqual([r["file"] for r in results], files)
        google = results[0]
        self.assertEqual(
            {
                k: google[k]
                for k in (*SMTPETER_COLUMNS[1:], "reporter", "records")
            },
            {
                "organizationName": "google.com",
                "email": "noreply-dmarc-support@google.com",
                "reportId": "15183795541370915627",
                "begin": 1764633600,
                "end": 1764719999,
                "domain": "example.com",
                "sendingDomain": "example.com",
                "messages": 121,
                "failedSpf": 3,
                "failedDkim": 3,
                "reporter": "google.com",
                "records": 2,
            },
        )
        self.assertEqual(google["policy"], {"p": "none", "sp": "none", "pct": 100, "adkim": "r", "aspf": "r"})
        self.assertEqual((results[1]["reporter"], results[1]["messages"]), ("microsoft.com", 42))
        self.assertEqual((results[2]["reporter"], results[2]["messages"]), ("yahooinc.com", 9))
        self.assertTrue(results[3]["error"].startswith("not a DMARC report"))
        out, err, code = await utils.getProcessOutputAndValue(
            SMTPETER, ["dmarc", "parse", str(FIXTURES / "mailru.eml")], env={}
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"corp.mail.ru (Mail.Ru) on shop.example.org", out)
