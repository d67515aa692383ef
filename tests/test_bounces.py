"""The bounce classifier (issue 11): DSNs, vendor notices, auto-replies, complaints, junk.

The messages here are small ones written for these tests in the shapes real
MTAs send; scripts/bounce_accuracy.py measures the classifier over Sisimai's
collection of real bounces in `make accuracy`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpeter.bounces import REASONS, classify, reason_for
from smtpeter.bounces.codes import find_command, find_replycode, find_status

ROOT = Path(__file__).parent.parent
SMTPETER = str(Path(sys.executable).parent / "smtpeter")  # the console script beside this interpreter


def crlf(text: str) -> bytes:
    return text.lstrip("\n").replace("\n", "\r\n").encode()


POSTFIX_DSN = crlf("""
Return-Path: <>
Date: Tue, 2 Jan 2024 10:00:00 +0100 (CET)
From: MAILER-DAEMON@mx.sender.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"

--B0UND
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sender.example.

<gone@rcpt.example>: host mx.rcpt.example[192.0.2.10] said: 550 5.1.1
    <gone@rcpt.example>: Recipient address rejected: User unknown in local
    recipient table (in reply to RCPT TO command)

<full@rcpt.example>: host mx.rcpt.example[192.0.2.10] said: 552 5.2.2
    <full@rcpt.example>: Mailbox full (in reply to RCPT TO command)

--B0UND
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example
X-Postfix-Queue-ID: 4Q1A2B3C4D
X-Postfix-Sender: rfc822; b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example
Arrival-Date: Tue,  2 Jan 2024 09:59:58 +0100 (CET)

Final-Recipient: rfc822; gone@rcpt.example
Original-Recipient: rfc822;gone@rcpt.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.rcpt.example
Diagnostic-Code: smtp; 550 5.1.1 <gone@rcpt.example>: Recipient address
    rejected: User unknown in local recipient table

Final-Recipient: rfc822; full@rcpt.example
Original-Recipient: rfc822;full@rcpt.example
Action: failed
Status: 5.2.2
Remote-MTA: dns; mx.rcpt.example
Diagnostic-Code: smtp; 552 5.2.2 <full@rcpt.example>: Mailbox full

--B0UND
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example>
From: News <news@sender.example>
To: gone@rcpt.example, full@rcpt.example
Subject: Our news
Message-ID: <20240102095958.abc@sender.example>
X-Mailer-Id: campaign-7

--B0UND--
""")

EXIM_TEXT = crlf("""
From: Mail Delivery System <Mailer-Daemon@mx.sender.example>
To: news@sender.example
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1rKxyz-000123-AB@mx.sender.example>
X-Failed-Recipients: nobody@rcpt.example

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  nobody@rcpt.example
    host mx.rcpt.example [192.0.2.20]
    SMTP error from remote mail server after RCPT TO:<nobody@rcpt.example>:
    550 5.1.1 <nobody@rcpt.example>: No such user here

------ This is a copy of the message, including all the headers. ------

Return-path: <news@sender.example>
From: news@sender.example
To: nobody@rcpt.example
Subject: Hello
Message-Id: <hello-1@sender.example>

Hello
""")

QMAIL_TEXT = crlf("""
From: MAILER-DAEMON@mx.rcpt.example
To: news@sender.example
Subject: failure notice

Hi. This is the qmail-send program at mx.rcpt.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<someone@rcpt.example>:
192.0.2.30 does not like recipient.
Remote host said: 550 Sorry, no such mailbox here
Giving up on 192.0.2.30.

--- Below this line is a copy of the message.

Return-Path: <news@sender.example>
From: news@sender.example
To: someone@rcpt.example
Subject: Hello
""")

SENDMAIL_TRANSCRIPT = crlf("""
From: Mail Delivery Subsystem <MAILER-DAEMON@old.rcpt.example>
To: news@sender.example
Subject: Returned mail: Host unknown

   ----- Transcript of session follows -----
550 5.1.2 <who@nowhere.example>... Host unknown (Name server: nowhere.example: host not found)

   ----- Unsent message follows -----
From: news@sender.example
To: who@nowhere.example
Subject: Hello
""")

GMAIL_TEXT = crlf("""
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: news@sender.example
Subject: Delivery Status Notification (Failure)

Delivery to the following recipient failed permanently:

     spam-trap@rcpt.example

Technical details of permanent failure:
Google tried to deliver your message, but it was rejected by the server for the recipient domain rcpt.example.

The error that the other server returned was:
550 5.7.1 Our system has detected that this message is likely unsolicited mail.

----- Original message -----

From: news@sender.example
To: spam-trap@rcpt.example
Subject: Hello
""")

EXCHANGE_2003 = crlf("""
From: System Administrator <postmaster@corp.example>
To: news@sender.example
Subject: Undeliverable: Hello
X-MS-Embedded-Report:
Content-Type: text/plain; charset=us-ascii

Your message

  To:      who@corp.example
  Subject: Hello
  Sent:    Tue, 2 Jan 2024 10:00:00 +0100

did not reach the following recipient(s):

who@corp.example on Tue, 2 Jan 2024 10:00:05 +0100
    The recipient name is not recognized
    MSEXCH:IMS:CORP:EXCHANGE 0 (000C05A6) Unknown Recipient
""")

DELAYED_DSN = crlf("""
From: MAILER-DAEMON@mx.sender.example
To: news@sender.example
Subject: Delayed Mail (still being retried)
Content-Type: multipart/report; report-type=delivery-status; boundary="D"

--D
Content-Type: text/plain

This is a warning only. Delivery is being retried.

--D
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example

Final-Recipient: rfc822; slow@rcpt.example
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.rcpt.example[192.0.2.40]:25: Connection timed out

--D--
""")

AUTO_REPLY = crlf("""
From: Kim <kim@rcpt.example>
To: news@sender.example
Subject: Out of office: Hello
Auto-Submitted: auto-replied
Precedence: bulk
Content-Type: text/plain; charset=utf-8

I am out of the office until Monday and will read your message then.
""")

ARF_REPORT = crlf("""
From: <feedback@isp.example>
To: <fbl@sender.example>
Subject: FW: Hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.50.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example>
Original-Rcpt-To: <complainer@isp.example>
Arrival-Date: Tue, 2 Jan 2024 10:00:00 +0100
Source-IP: 192.0.2.50

--ARF
Content-Type: text/rfc822-headers

From: News <news@sender.example>
To: complainer@isp.example
Subject: Hello
Message-ID: <hello-2@sender.example>

--ARF--
""")


def test_dsn_two_recipients_with_their_own_reasons() -> None:
    report = classify(POSTFIX_DSN)
    assert report.kind == "bounce"
    gone, full = report.recipients
    assert (gone.recipient, gone.status, gone.replycode, gone.reason, gone.hardbounce, gone.command) == (
        "gone@rcpt.example", "5.1.1", "550", "userunknown", True, "RCPT")
    assert (full.recipient, full.status, full.replycode, full.reason, full.hardbounce) == (
        "full@rcpt.example", "5.2.2", "552", "mailboxfull", False)
    assert "User unknown in local recipient table" in gone.diagnostic
    assert gone.action == "failed" and gone.remote_mta == "mx.rcpt.example"


def test_dsn_names_the_original_and_where_the_report_went() -> None:
    report = classify(POSTFIX_DSN)
    assert report.to == ("b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example",)
    assert report.reporting_mta == "mx.sender.example"
    original = report.original
    assert original.message_id == "20240102095958.abc@sender.example"
    assert original.envelope_sender == "b-01m85gm2h148dd856p-0abcdefghjkmnpqrs@bounces.sender.example"
    assert original.sender == "news@sender.example"
    assert original.x_headers == {"X-Mailer-Id": "campaign-7"}


def test_exim_notice_without_a_report() -> None:
    (result,) = classify(EXIM_TEXT).recipients
    assert (result.recipient, result.status, result.reason, result.hardbounce, result.command) == (
        "nobody@rcpt.example", "5.1.1", "userunknown", True, "RCPT")


def test_qmail_notice_has_the_command_in_its_words() -> None:
    report = classify(QMAIL_TEXT)
    (result,) = report.recipients
    assert (result.recipient, result.reason, result.command, result.hardbounce) == (
        "someone@rcpt.example", "userunknown", "RCPT", True)
    # No status code in the notice: Sisimai's stand-in for the reason, permanent class.
    assert result.status == "5.0.911"
    assert report.original.recipients == ("someone@rcpt.example",)


def test_sendmail_transcript_recipient_after_the_reply_code() -> None:
    (result,) = classify(SENDMAIL_TRANSCRIPT).recipients
    assert (result.recipient, result.status, result.reason, result.hardbounce) == (
        "who@nowhere.example", "5.1.2", "hostunknown", True)


def test_gmail_notice() -> None:
    (result,) = classify(GMAIL_TEXT).recipients
    assert (result.recipient, result.status, result.reason, result.hardbounce) == (
        "spam-trap@rcpt.example", "5.7.1", "spamdetected", False)


def test_exchange_2003_error_code() -> None:
    (result,) = classify(EXCHANGE_2003).recipients
    assert (result.recipient, result.reason, result.hardbounce) == ("who@corp.example", "userunknown", True)
    assert result.status == "5.0.911"


def test_delayed_dsn_is_a_soft_expiry() -> None:
    (result,) = classify(DELAYED_DSN).recipients
    assert (result.recipient, result.status, result.reason, result.hardbounce, result.action) == (
        "slow@rcpt.example", "4.4.1", "expired", False, "delayed")


def test_auto_reply_is_a_response() -> None:
    report = classify(AUTO_REPLY)
    assert report.kind == "response"
    (result,) = report.recipients
    assert (result.recipient, result.reason, result.hardbounce, result.status) == (
        "kim@rcpt.example", "vacation", False, "")


def test_arf_report_is_a_complaint() -> None:
    report = classify(ARF_REPORT)
    assert report.kind == "abuse"
    (result,) = report.recipients
    assert (result.recipient, result.reason, result.feedbacktype, result.hardbounce) == (
        "complainer@isp.example", "feedback", "abuse", False)
    assert report.original.message_id == "hello-2@sender.example"


def test_a_bounce_is_not_mistaken_for_an_auto_reply() -> None:
    # Postfix marks its bounces Auto-Submitted: auto-replied too.
    assert classify(POSTFIX_DSN).kind == "bounce"


def test_ordinary_mail_and_junk_are_undefined() -> None:
    ordinary = crlf("""
From: Friend <friend@example.org>
To: news@sender.example
Subject: Lunch?

Are you free on Friday?
""")
    for message in (ordinary, b"", b"\x00\xff garbage \x80", b"Subject: only a header"):
        report = classify(message)
        assert report.kind == "undefined"
        assert report.recipients == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_classify_without_raising(message: bytes) -> None:
    report = classify(message)
    assert report.kind in ("bounce", "response", "abuse", "undefined")
    assert all(r.reason in REASONS for r in report.recipients)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(POSTFIX_DSN)))
def test_truncated_reports_classify_without_raising(cut: int) -> None:
    report = classify(POSTFIX_DSN[:cut])
    assert all(r.reason in REASONS for r in report.recipients)


def test_reason_for_our_own_delivery_replies() -> None:
    assert reason_for("5.1.1", "550", "5.1.1 <a@b.example>: Recipient address rejected: User unknown") == (
        "userunknown", True)
    assert reason_for("", "", "452 4.2.2 The email account that you tried to reach is over quota") == (
        "mailboxfull", False)
    blocked = "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    assert reason_for("", "554", blocked) == ("blocked", False)
    assert reason_for("5.7.26", "550", "Unauthenticated email from sender.example is not accepted due to "
                                       "domain's DMARC policy") == ("authfailure", False)
    assert reason_for("", "550", "Requested action not taken: mailbox unavailable", command="RCPT") == (
        "userunknown", True)
    assert reason_for("", "521", "mx.example does not accept mail") == ("notaccept", True)
    # A provider's own words, known by the host that answered.
    unusual = "4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP"
    assert reason_for("", "421", unusual, "DATA") == ("securityerror", False)
    gmail = "gmail-smtp-in.l.google.com"
    assert reason_for("", "421", unusual, "DATA", remote_host=gmail) == ("blocked", False)
    assert reason_for("", "", "") == ("undefined", False)


def test_codes_found_in_text_not_in_addresses_or_versions() -> None:
    assert find_status("host 192.0.2.1 said: 550 5.1.1 unknown (Exim 4.72)") == "5.1.1"
    assert find_status("550-5.7.1 [192.0.2.5] 5.0.0 blocked") == "5.7.1"
    assert find_status("version v5.1.1 of 10.2.1.1") == ""
    assert find_replycode("host [192.0.2.1] said: 552 5.2.2 full") == "552"
    assert find_command("said: 550 unknown (in reply to RCPT TO command)") == "RCPT"
    assert find_command("SMTP error from remote mail server after end of data:") == "DATA"
    assert find_command("Connected to 192.0.2.1 but my name was rejected.") == "EHLO"


def test_cli_prints_each_files_recipients(tmp_path: Path) -> None:
    dsn = tmp_path / "dsn.eml"
    dsn.write_bytes(POSTFIX_DSN)
    arf = tmp_path / "arf.eml"
    arf.write_bytes(ARF_REPORT)
    done = subprocess.run([SMTPETER, "bounce", "parse", "--json", str(dsn), str(arf)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert [item["kind"] for item in printed] == ["bounce", "abuse"]
    assert printed[0]["recipients"][0] == {
        "recipient": "gone@rcpt.example", "status": "5.1.1", "replycode": "550", "reason": "userunknown",
        "hardbounce": True, "feedbacktype": ""}
    assert printed[1]["recipients"][0]["feedbacktype"] == "abuse"


def test_cli_says_which_file_it_cannot_read(tmp_path: Path) -> None:
    done = subprocess.run([SMTPETER, "bounce", "parse", str(tmp_path / "missing.eml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1
    assert "missing.eml: cannot read" in done.stderr
