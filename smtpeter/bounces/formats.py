"""Vendor formats: bounces whose shape or words are their own.

Each reader recognises its format by what only it writes (a From address, a
Subject, a Received line, a phrase) and reads the recipients and their errors;
most also know what their MTA's own messages mean (qmail's "does not like
recipient." is a failed RCPT). A reader that does not recognise the message
returns [] and the next one is tried; when none does, the generic scan of the
notice applies (scan.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from smtpeter.bounces.codes import find_command, find_replycode, find_status
from smtpeter.bounces.parse import Parsed
from smtpeter.bounces.reasons import status_reason
from smtpeter.bounces.scan import Finding, addresses_in, first_address, scan_text, sweep


def vendor_findings(parsed: Parsed, senders: set[str]) -> tuple[list[Finding], bool]:
    """Recipients read by the first format that recognises the message, and whether its
    reading replaces the message's DSN fields (some MTAs' own text says more)."""
    for reader, over_dsn in READERS:
        found = reader(parsed, senders)
        if found:
            return found, over_dsn
    return [], False


def _first(table: list[tuple[str, tuple[str, ...]]], text: str, lower: bool = False) -> str:
    """The reason of the first row whose phrases ``text`` contains."""
    if lower:
        text = text.lower()
    for reason, phrases in table:
        if any(phrase in text for phrase in phrases):
            return reason
    return ""


def _received(parsed: Parsed, marker: str) -> bool:
    return any(marker in value for value in parsed.header_all("received"))


def _lines_after(text: str, start: str | re.Pattern[str]) -> list[str]:
    """The notice's lines after the first that starts with (or matches) ``start``; [] if none does."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if (line.startswith(start) if isinstance(start, str) else start.search(line)):
            return lines[index + 1:]
    return []


# -- qmail ------------------------------------------------------------------------------------

_QMAIL_REASONS = [
    ("hostunknown", ("Sorry, I couldn't find any host ",)), ("mailboxfull", ("disk quota exceeded",)),
    ("mesgtoobig", ("Message size exceeds fixed maximum message size:",)),
    ("networkerror", ("Sorry, I wasn't able to establish an SMTP connection",
                      "Sorry. Although I'm listed as a best-preference MX or A for that host")),
    ("notaccept", ("Sorry, I couldn't find a mail exchanger or IP address",)),
    ("systemerror", ("bad interpreter: No such file or directory", "system error", "Unable to")),
    ("systemfull", ("Requested action not taken: mailbox unavailable (not enough free space)",)),
    ("userunknown", ("no mailbox here by that name",)),
    ("exceedlimit", ("The message exeeded the maximum size the user accepts",)),
    ("suspend", ("Mailaddress is administrativly disabled", "Mailaddress is administrativley disabled",
                 "Mailaddress is administratively disabled", "Mailaddress is administrativeley disabled")),
    ("systemerror", ("Automatic homedir creator crashed", "Illegal value in LDAP attribute",
                     "LDAP attribute is not given but mandatory",
                     "Timeout while performing search on LDAP server",
                     "Too many results returned but needs to be unique",
                     "Permanent error while executing qmail-forward",
                     "Temporary error in automatic homedir creation",
                     "Temporary error while executing qmail-forward", "Temporary failure in LDAP lookup",
                     "Unable to contact LDAP server", "Unable to login into LDAP server, bad credentials")),
    ("expired", ("this message has been in the queue too long.",)),
]


_QMAIL_STARTS = (  # qmail-send's greeting and its clones' (Yahoo!'s, Symantec's, ...)
    "Hi. This is the qmail", "He/Her is not ", "unable to deliver your message to the following addresses",
    "Su mensaje no pudo ser entregado",
    "Sorry, we were unable to deliver your message to the following address",
    "This is the machine generated message from mail service", "This is the mail delivery agent at",
    "Unable to deliver message to the following address",
    "Unfortunately, your mail was not delivered to the following address:",
    "Your mail message to the following address", "Your message to the following addresses", "We're sorry.",
)


def read_qmail(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """qmail and its clones: "<rcpt>:" then qmail-remote's account of the session."""
    subject = parsed.header("subject")
    if subject not in ("failure notice", "Failure Notice") and not _received(parsed, "(qmail "):
        return []
    lines = parsed.text.split("\n")
    start = next((i for i, line in enumerate(lines) if any(phrase in line for phrase in _QMAIL_STARTS)), -1)
    if start < 0:
        return []
    found: list[Finding] = []
    for line in lines[start + 1:]:
        if re.match(r"^<[^<>\s]+@[^<>\s]+>:", line):
            found.append(Finding(recipient=first_address(line)))
        elif found and line.strip():
            found[-1].diagnostic = sweep(f"{found[-1].diagnostic} {line}")
    for finding in found:
        diagnostic = finding.diagnostic
        finding.command = find_command(diagnostic)
        if finding.command in ("EHLO", "HELO"):
            finding.hint = "blocked"
        elif " does not like recipient." in diagnostic and "has been in the queue too long." in diagnostic:
            finding.hint = ""  # the remote server's words decide
        else:
            said = re.search(r"Remote host said:.*", diagnostic)
            in_reply = _first(_QMAIL_REASONS, said.group(0)) if said else ""
            finding.hint = in_reply or _first(_QMAIL_REASONS, diagnostic)
    return found


# -- Exim -------------------------------------------------------------------------------------

_EXIM_SUBJECTS = ("Delivery Status Notification", "Mail delivery failed", "Mail failure", "Message frozen",
                  "Warning: message ", "error(s) in forwarding or filtering")
_EXIM_REASONS = [
    ("userunknown", ("user not found",)),
    ("hostunknown", ("all host address lookups failed permanently",
                     "all relevant MX records point to non-existent hosts", "Unrouteable address")),
    ("mailboxfull", ("mailbox is full", "error: quota exceed")),
    ("notaccept", ("an MX or SRV record indicated no SMTP service",
                   "no host found for existing SMTP connection")),
    ("syntaxerror", ("angle-brackets nested too deep", 'expected word or "<"',
                     "domain missing in source-routed address", "malformed address:")),
    ("systemerror", ("delivery to file forbidden", "delivery to pipe forbidden", "local delivery failed",
                     "LMTP error after ")),
    ("contenterror", ('Too many "Received" headers',)),
]
_EXIM_DELAYED = ("retry timeout exceeded", "No action is required on your part",
                 "retry time not reached for any host after a long failure period",
                 "all hosts have been failing for a long time and were last tried", "Delay reason: ",
                 "has been frozen", "was frozen on arrival by ")
_EXIM_START = re.compile(
    r"This message was created automatically by mail delivery software\."
    r"|A message that you sent (?:was rejected by the local scan|contained one or more recipient addresses "
    r"|could not be delivered to all of its recipients)"
    r"| has been frozen| was frozen on arrival| router encountered the following error\(s\):"
    r"|has not yet been delivered to one or more of its")
# "  rcpt", "  rcpt: error", "  rcpt <alias>: error", "  an undisclosed address", "  localpart"
_EXIM_RECIPIENT = re.compile(
    r"^  (?! )(?:(?P<undisclosed>an undisclosed address)"
    r"|<?(?P<address>[^\s<>:]+@[^\s<>:]+\.[^\s<>:]+)>?(?:(?: <[^>]*>)?: (?P<text>.*)|\s*$)"
    r"|(?P<local>[^\s@:]+)(?:: (?P<ltext>.*))?$)")


def _is_exim(parsed: Parsed) -> bool:
    votes = ("Mail Delivery System" in parsed.header("from")) + any(
        subject in parsed.header("subject") for subject in _EXIM_SUBJECTS)
    message_id = parsed.header("message-id")
    votes += bool(re.match(r"<\w{7}-\w{6}-\w{2}@", message_id))  # Exim's own ids: <1rKxyzA-000123-AB@...>
    third_party = bool(parsed.header("x-mx-bounce") or parsed.header("x-mxl-hash") or
                       parsed.header("x-mxl-notehash") or "<mxl~" in message_id)
    return votes >= 2 or third_party


def read_exim(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Exim: recipients indented two spaces, the error (and "generated from" aliases) under them."""
    if not _is_exim(parsed):
        return []
    lines = parsed.text.split("\n")
    start = next((i for i, line in enumerate(lines) if _EXIM_START.search(line)), -1)
    if start < 0:
        return []
    third_party = bool(parsed.header("x-mx-bounce") or parsed.header("x-mxl-hash")
                       or parsed.header("x-mxl-notehash") or "<mxl~" in parsed.header("message-id"))
    findings: list[Finding] = []
    current: Finding | None = None
    for line in lines[start:]:
        if not line.strip():
            continue
        if re.match(r"^-{5,} This is a copy", line):
            break
        if re.match(r"^  (?:pipe to \||save to )", line):
            # A pipe or a file, not an address: the recipient is the alias under it.
            current = Finding(recipient="", diagnostic=sweep(line))
            findings.append(current)
            continue
        m = _EXIM_RECIPIENT.match(line)
        if m and not re.match(r"^  (?:SMTP|host|LMTP) ",
                              line) and (third_party or not line.startswith("  <")):
            address = m.group("address") or ""
            current = Finding(recipient=address, diagnostic=sweep(m.group("text") or m.group("ltext") or ""))
            findings.append(current)
            continue
        if current is None:
            continue
        alias = re.search(r"\((?:ultimately )?generated from (\S+@\S+?)\)|generated by (\S+@\S+)", line)
        if alias:
            current.extra["alias"] = (alias.group(1) or alias.group(2)).strip("<>()")
            continue
        if line.startswith("------ pipe to ") or line.startswith("The following text was generated"):
            continue
        if line.startswith(" "):
            current.diagnostic = sweep(f"{current.diagnostic} {line}")
    failed = addresses_in(parsed.header("x-failed-recipients"))
    for index, finding in enumerate(findings):
        if not finding.recipient:
            finding.recipient = finding.extra.get("alias") or (failed[index] if index < len(failed) else "")
    findings = [f for f in findings if f.recipient]
    if not findings and failed:
        findings = [Finding(recipient=address) for address in failed]
    for finding in findings:
        diagnostic = finding.diagnostic
        if "SMTP error from remote " in diagnostic or "LMTP error after " in diagnostic:
            finding.command = find_command(diagnostic)
        if finding.command in ("EHLO", "HELO"):
            finding.hint = "blocked"
        elif finding.command == "MAIL":
            finding.hint = "onhold"
        else:
            finding.hint = _first(_EXIM_REASONS, diagnostic)
            if not finding.hint and any(phrase in diagnostic for phrase in _EXIM_DELAYED):
                finding.hint = "expired"
            elif not finding.hint and "pipe to |" in diagnostic:
                finding.hint = "mailererror"
        replycode = find_replycode(diagnostic)
        # Exim retries until it gives up: its own "expired" and "full" are temporary states.
        if replycode.startswith("4") or finding.hint in ("expired", "mailboxfull"):
            finding.extra["temporary"] = "yes"
    return findings


# -- DragonFly Mail Agent -------------------------------------------------------------------------

def read_dragonfly(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if "Mail delivery failed" not in parsed.header("subject") or not _received(parsed,
                                                                               " (DragonFly Mail Agent"):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text, "This is the DragonFly Mail Agent "):
        if line.startswith("There was an error delivering your mail to <"):
            findings.append(Finding(recipient=first_address(line)))
        elif findings and line.strip():
            finding = findings[-1]
            finding.diagnostic = sweep(f"{finding.diagnostic} {line}")
            if " did not like our " in line and not finding.command:
                finding.command = find_command(line)
    for finding in findings:
        finding.hint = _first([("expired", ("Could not deliver for the last ",)),
                               ("hostunknown", ("DNS lookup failure: host ",))], finding.diagnostic)
    return findings


# -- OpenSMTPD --------------------------------------------------------------------------------

_OPENSMTPD_REASONS = [
    ("expired", ("Envelope expired",)), ("securityerror", ("Could not retrieve credentials",)),
    ("hostunknown", ("Invalid domain name", "Domain does not exist")),
    ("networkerror", ("Address family mismatch on destination MXs", "All routes to destination blocked",
                      "bad DNS lookup error code", "Could not retrieve source address", "Loop detected",
                      "Network error on destination MXs", "No valid route to remote MX",
                      "No valid route to destination", "Temporary failure in MX lookup")),
    ("notaccept", ("Destination seem to reject all mails", "No MX found for domain",
                   "No MX found for destination")),
]


def read_opensmtpd(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """OpenSMTPD: "rcpt: error" lines; its text is more precise than the DSN it attaches."""
    if not ("Delivery status notification" in parsed.header("subject")
            or "Mailer Daemon <" in parsed.header("from")
            or _received(parsed, " (OpenSMTPD) with ")):
        return []
    findings = []
    for line in _lines_after(parsed.text, "    This is the MAILER-DAEMON, please DO NOT REPLY to this"):
        m = re.match(r"^(\S+@\S+?):?\s(.*)$", line)
        if m and first_address(m.group(1)):
            diagnostic = sweep(m.group(2))
            findings.append(Finding(recipient=first_address(m.group(1)), diagnostic=diagnostic,
                                    hint=_first(_OPENSMTPD_REASONS, diagnostic)))
    return findings


# -- IMail Server -------------------------------------------------------------------------------

_IMAIL_REASONS = [
    ("hostunknown", ("Unknown host",)), ("userunknown", ("Unknown user", "Invalid final delivery userid")),
    ("mailboxfull", ("User mailbox exceeds allowed size",)),
    ("virusdetected", ("Requested action not taken: virus detected",)),
    ("spamdetected", ("Blacklisted URL in message",)), ("expired", ("Delivery failed ",)),
]


def read_imailserver(parsed: Parsed, senders: set[str]) -> list[Finding]:
    subject = parsed.header("subject")
    if not (subject.startswith("Undeliverable Mail ") or subject == "Undeliverable Mail"
            or parsed.header("x-mailer").startswith("<SMTP32 v")):
        return []
    findings: list[Finding] = []
    response: list[str] = []
    for line in parsed.text.split("\n"):
        if line.startswith("Original message follows."):
            break
        if (line.find(": ") > 8 and "@" in line[line.find(": "):]) or line.startswith("undeliverable "):
            if first_address(line):
                findings.append(Finding(recipient=first_address(line), diagnostic=line))
        elif "Body of message generated response:" in line or response:
            response.append(line)
    for finding in findings:
        finding.diagnostic = sweep(" ".join(response) + " " + finding.diagnostic)
        finding.command = find_command(finding.diagnostic)
        finding.hint = _first(_IMAIL_REASONS, finding.diagnostic)
    return findings


# -- au EZweb -----------------------------------------------------------------------------------

_EZWEB_REASONS = [
    ("expired", ("Your message was not delivered within ",)),
    ("mailboxfull", ("The user(s) account is temporarily over quota",)),
    ("onhold", ("Each of the following recipients was rejected by a remote mail server",)),
    ("suspend", ("The user(s) account is disabled.", "The user(s) account is temporarily limited.")),
]


def read_ezweb(parsed: Parsed, senders: set[str]) -> list[Finding]:
    sender, subject = parsed.header("from"), parsed.header("subject")
    message_id = parsed.header("message-id")
    received = any("ezweb.ne.jp (EZweb Mail) with" in line or ".au.com (" in line
                   for line in parsed.header_all("received"))
    votes = sum((
        "Postmaster@ezweb.ne.jp" in sender, "Postmaster@au.com" in sender,
        subject == "Mail System Error - Returned Mail", received,
        ".ezweb.ne.jp>" in message_id, ".au.com>" in message_id,
    ))
    if votes < 2:
        return []
    lines = parsed.text.split("\n")
    start = next((i for i, line in enumerate(lines)
                  if line.startswith(("The user(s) ", "Your message ", "Each of the following", "<"))), -1)
    if start < 0:
        return []
    findings: list[Finding] = []
    before = ""
    for line in lines[start:]:
        if line.startswith("---------------"):
            break
        if not line.strip():
            continue
        if re.search(r"<[^>]*@[^>]*>", line) and ("Recipient: <" in line[1:] or line.startswith("<")):
            findings.append(Finding(recipient=first_address(line), diagnostic=sweep(f"{before} {line}")))
            before = ""
        elif findings:
            finding = findings[-1]
            if " >>> " in line or line.lstrip().startswith(">>>"):
                finding.command = find_command(line)
            finding.diagnostic = sweep(f"{finding.diagnostic} {line}")
        else:
            before = sweep(f"{before} {line}")
    for finding in findings:
        if parsed.header("x-spasign") == "NG":
            finding.hint = "filtered"  # au's spam filter ("spamghetti") marks what it refused
            continue
        finding.hint = _first(_EZWEB_REASONS, finding.diagnostic)
        if not finding.hint and not re.search(r"@(?:ezweb\.ne\.jp|au\.com)$", finding.recipient) \
                and finding.diagnostic.startswith("<"):
            finding.hint = "userunknown"
    return findings


# -- Microsoft Exchange 2003 --------------------------------------------------------------------

_EXCHANGE2003_CODES = {
    "000C05A6": "userunknown", "000C0595": "filtered", "00010256": "systemerror", "000D06B5": "systemerror",
    "00120270": "networkerror", "00050311": "contenterror", "000502CC": "contenterror",
    "000B0981": "securityerror",
    "000B099C": "onhold", "000B09AA": "onhold", "000B09B6": "onhold",
}


def _is_exchange2003(parsed: Parsed) -> bool:
    if parsed.has("x-ms-embedded-report"):
        return True
    mailer = parsed.header("x-mailer")
    if mailer.startswith(("Internet Mail Service (", "Microsoft Exchange Server Internet Mail Connector")):
        return True
    if parsed.header("x-mimeole").startswith("Produced By Microsoft Exchange"):
        return True
    return _received(parsed, " with Internet Mail Service (")


def read_exchange2003(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Exchange 2003: "rcpt on DATE" lines, then "MSEXCH:... (000C05A6) Unknown Recipient"."""
    if not _is_exchange2003(parsed):
        return []
    lines = _lines_after(parsed.text, "did not reach the following recipient(s):") or \
        _lines_after(parsed.text, re.compile(r"did not reach the following recipient\(s\):"))
    findings: list[Finding] = []
    for line in lines:
        m = re.match(r"^\s*(.+?@\S+)\s+on\s", line)
        if m:
            smtp = re.search(r":smtp=([^;]+); on ", line, re.I)
            findings.append(Finding(recipient=first_address(smtp.group(1) if smtp else m.group(1))))
        elif findings and line.strip():
            findings[-1].extra["lines"] = findings[-1].extra.get("lines", "") + " " + line.strip()
    for finding in findings:
        text = sweep(finding.extra.get("lines", ""))
        m = re.search(r"MSEXCH:.*?\(([0-9A-F]{8})\)\s*(.*)", text)
        if m:
            finding.hint = _EXCHANGE2003_CODES.get(m.group(1), "")
            finding.diagnostic = sweep(m.group(2))
            if finding.hint and finding.hint != "onhold":
                finding.extra["pseudo"] = "yes"
        else:
            finding.diagnostic = text
        if not finding.hint:
            finding.diagnostic = text
    return findings


# -- HCL Domino ---------------------------------------------------------------------------------

_DOMINO_REASONS = [
    ("filtered", ("Cannot route mail to user",)),
    ("systemerror", ("Several matches found in Domino Directory",)),
    ("userunknown", ("not listed in Domino Directory", "not listed in public Name & Address Book",
                     "no se encuentra en el Directorio de Domino", "non répertorié dans l'annuaire Domino",
                     "Domino ディレクトリには見つかりません")),
]


def read_domino(parsed: Parsed, senders: set[str]) -> list[Finding]:
    subject = parsed.header("subject")
    if not (subject.startswith("DELIVERY FAILURE:") or "DELIVERY_FAILURE" in subject):
        return []
    findings: list[Finding] = []
    expecting = ""
    for line in _lines_after(parsed.text, "Your message"):
        if not line.strip():
            continue
        if line.strip() == "was not delivered to:":
            expecting = "recipient"
        elif line.strip() == "because:":
            expecting = "reason"
        elif expecting == "recipient" and first_address(line):
            findings.append(Finding(recipient=first_address(line)))
            expecting = ""
        elif expecting == "reason" and findings:
            findings[-1].diagnostic = sweep(line)
            expecting = ""
    for finding in findings:
        finding.hint = _first(_DOMINO_REASONS, finding.diagnostic)
        if finding.hint:
            finding.extra["pseudo"] = "yes"
    return findings


# -- Verizon --------------------------------------------------------------------------------------

def read_verizon(parsed: Parsed, senders: set[str]) -> list[Finding]:
    sender = parsed.header("from")
    if "post_master@vtext.com" not in sender and not re.search(r"sysadmin@\S*\.vzwpix\.com", sender):
        return []
    text = parsed.text
    recipient = ""
    m = re.search(r"(?m)^\s*RCPT TO: (\S+)", text)
    if m:
        recipient = first_address(m.group(1))
    if not recipient:
        recipient = first_address(parsed.original("to"))
    if not recipient:
        return []
    lines = _lines_after(text, "Error: ")
    error = [line for line in text.split("\n") if line.startswith("Error: ")][:1]
    words = []
    for line in error + lines:
        if line.startswith(("Original Message:", "Message details:")):
            break
        words.append(line)
    diagnostic = sweep(" ".join(words))
    hint = _first([("userunknown", ("550 - Requested action not taken: no such user here",
                                    "No valid recipients"))],
                  diagnostic)
    return [Finding(recipient=recipient, diagnostic=diagnostic, hint=hint)]


# -- two MTAs nobody has named (Sisimai's X1, X3) -------------------------------------------------------

def read_x1(parsed: Parsed, senders: set[str]) -> list[Finding]:
    subject = parsed.header("subject")
    if not (subject.startswith(("Returned Mail: ", "Mail Delivery Failure"))
            or re.search(r'"Mail Deliver\w* System" ', parsed.header("from"))):
        return []
    findings: list[Finding] = []
    words: list[str] = []
    for line in _lines_after(parsed.text, "The original message was received at ") or []:
        if re.match(r"^(\S+@\S+) \[.*\]", line):
            findings.append(Finding(recipient=first_address(line.split(" ")[0]),
                                    diagnostic=sweep(" ".join([*words, line]))))
        elif line.strip():
            words.append(line.strip("-") + (":" if line.startswith("---") else ""))
    return [f for f in findings if f.recipient]


def read_x3(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.header("from").startswith("Mail Delivery System") or \
            not parsed.header("subject").startswith("Delivery status notification"):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text,
                             "      This is an automatically generated Delivery Status Notification."):
        m = re.match(r"^\s+\* (\S+@\S+\.\S+)", line)
        if m:
            findings.append(Finding(recipient=first_address(m.group(1))))
        elif findings and line.startswith("SMTP:"):
            findings[-1].command = find_command(line[4:10])
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
        elif findings and line.startswith("Routing: "):
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
    return findings


_GMAIL_STATES = {  # Gmail's "(state N)": the command it was in and what that means
    "6": ("MAIL", "failedstarttls"), "8": ("AUTH", "systemerror"), "9": ("AUTH", "failedstarttls"),
    "12": ("AUTH", "norelaying"), "13": ("EHLO", "blocked"), "14": ("RCPT", "userunknown"),
    "15": ("DATA", "filtered"), "17": ("DATA", "filtered"), "18": ("DATA", "filtered"),
}
_GMAIL_MESSAGES = [
    ("expired", ("DNS Error: Could not contact DNS servers",
                 "Delivery to the following recipient has been delayed",
                 "The recipient server did not accept our requests to connect")),
    ("hostunknown", ("DNS Error: Domain name not found",
                     "DNS Error: DNS server returned answer with no data")),
]


def read_gmail(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Gmail's own notice: the recipients indented under "Delivery to the following recipient..."."""
    if "<mailer-daemon@googlemail.com>" not in parsed.header("from").lower() or \
            "delivery status notification" not in parsed.header("subject").lower():
        return []
    lines = parsed.text.split("\n")
    start = next((i for i,
                  line in enumerate(lines) if line.startswith("Delivery to the following recipient")), -1)
    if start < 0:
        return []
    findings: list[Finding] = []
    words: list[str] = []
    for line in lines[start:]:
        if line.startswith(" ") and "@" in line and first_address(line) and len(line.split()) == 1:
            findings.append(Finding(recipient=first_address(line)))
        elif line.strip():
            words.append(line.strip())
    diagnostic = sweep(" ".join(words))
    for finding in findings:
        finding.diagnostic = diagnostic
        m = re.search(r" \(state (\d+)\)", diagnostic)
        if m and m.group(1) in _GMAIL_STATES:
            finding.command, finding.hint = _GMAIL_STATES[m.group(1)]
        if not finding.hint:
            finding.hint = next((reason for reason, phrases in _GMAIL_MESSAGES
                                 if any(phrase in diagnostic for phrase in phrases)), "")
        if finding.hint:
            status = find_status(diagnostic)
            if status and ".0" not in status:
                finding.hint = status_reason(status) or finding.hint
    return findings


def read_google_groups(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Google Groups: a post to a group that does not exist or does not take it."""
    failed = parsed.header("x-failed-recipients")
    if not failed or "Google Groups" not in parsed.text or not parsed.header("x-google-smtp-source"):
        return []
    if "<mailer-daemon@googlemail.com>" not in parsed.header("from").lower():
        return []
    notice = parsed.text
    # Four bullet points ("might have spelled...", "removed this group", "join the group",
    # "not open to posting") in whatever language: the post was refused.
    bullets = len(re.findall(r"\n ?\*", notice))
    hint = "rejected" if bullets == 4 else "onhold"
    paragraphs = notice.split("\n\n")
    diagnostic = sweep(" ".join(paragraphs[:4]))
    return [Finding(recipient=address, diagnostic=diagnostic, hint=hint) for address in addresses_in(failed)]




# -- Postfix ------------------------------------------------------------------------------------

def read_postfix(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Postfix's two shapes of its own: the smtpd session transcript it mails the postmaster
    ("SMTP server: errors from ..."), and a notice whose delivery report is unavailable.
    Its ordinary notices are a DSN with the same errors in text, which the pipeline merges."""
    subject = parsed.header("subject")
    if "SMTP server: errors from " in subject:
        return _postfix_transcript(parsed.text)
    unavailable = "--- Delivery report unavailable ---" in parsed.text
    if subject == "Undelivered Mail Returned to Sender" and unavailable \
            and not parsed.dsn_recipients:
        recipient = first_address(parsed.original("to"))
        return [Finding(recipient=recipient)] if recipient else []
    return []


def _postfix_transcript(text: str) -> list[Finding]:
    """ In:  RCPT TO:<a@b> / Out: 550 5.1.1 ...: the first failed reply after each recipient."""
    steps: list[tuple[str, str]] = []  # ("In"/"Out", text), continuation lines joined
    for line in text.split("\n"):
        m = re.match(r"^\s*(In|Out):\s*(.*)$", line)
        if m:
            steps.append((m.group(1), m.group(2)))
        elif steps and line.startswith("     ") and line.strip():
            kind, value = steps[-1]
            steps[-1] = (kind, f"{value} {line.strip()}")
    findings: list[Finding] = []
    command = ""
    current: Finding | None = None
    for kind, value in steps:
        if kind == "In":
            command = (value.split() or [""])[0].upper()
            if command == "RCPT":
                current = Finding(recipient=first_address(value))
                findings.append(current)
            continue
        reply = value[:3]
        if not reply.isdigit() or int(reply) < 400:
            continue
        target = current if current is not None else (findings[-1] if findings else None)
        if target is not None and not target.diagnostic:
            target.diagnostic = sweep(value)
            target.command = command
    return [f for f in findings if f.recipient]


# -- Apache James ------------------------------------------------------------------------------

def read_apachejames(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not (parsed.header("subject") == "[BOUNCE]" or ".JavaMail." in parsed.header("message-id")
            or _received(parsed, "JAMES SMTP Server")):
        return []
    before, _, details = parsed.text.partition("Message details:")
    recipients = re.findall(r"(?m)^\s+RCPT TO: (\S+)", details)
    diagnostic = sweep(before)
    return [Finding(recipient=first_address(r),
                    diagnostic=diagnostic) for r in recipients if first_address(r)]


# -- Amazon SES notifications (JSON) ------------------------------------------------------------------

def read_amazonses_json(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """SES's SNS notification: {"notificationType": "Bounce" | "Complaint" | "Delivery", ...}."""
    text = parsed.text
    if "notificationType" not in text:
        return []
    document = _ses_document(text)
    if not isinstance(document, dict):
        return []
    kind = document.get("notificationType", "")
    findings: list[Finding] = []
    if kind == "Bounce":
        bounce = document.get("bounce") or {}
        subtype = str(bounce.get("bounceSubType", ""))
        for row in bounce.get("bouncedRecipients") or []:
            diagnostic = sweep(str(row.get("diagnosticCode", "")))
            findings.append(Finding(
                recipient=str(row.get("emailAddress", "")), diagnostic=diagnostic,
                status=find_status(str(row.get("status", ""))), action=str(row.get("action", "")),
                hint={"Suppressed": "suppressed", "OnAccountSuppressionList": "suppressed"}.get(subtype, "")))
    elif kind == "Complaint":
        complaint = document.get("complaint") or {}
        feedback = str(complaint.get("complaintFeedbackType") or "abuse")
        for row in complaint.get("complainedRecipients") or []:
            findings.append(Finding(recipient=str(row.get("emailAddress", "")), hint="feedback",
                                    feedbacktype=feedback,
                                    diagnostic=sweep(str(complaint.get("userAgent", "")))))
    elif kind == "Delivery":
        delivery = document.get("delivery") or {}
        response = sweep(str(delivery.get("smtpResponse", "")))
        for address in delivery.get("recipients") or []:
            findings.append(Finding(recipient=str(address), diagnostic=response, hint="delivered",
                                    action="delivered", status=find_status(response, "2")))
    return [f for f in findings if f.recipient]


def _ses_document(text: str) -> object:
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:].replace("!\n ", "")  # SNS folds long lines with "!\n "
    decoder = json.JSONDecoder(strict=False)
    try:
        document, _ = decoder.raw_decode(body)  # the notification, then SNS's unsubscribe text
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("Message"), str):
        try:
            return decoder.raw_decode(document["Message"])[0]  # wrapped in an SNS envelope
        except ValueError:
            return None
    return document


# -- Trend Micro InterScan MSS -----------------------------------------------------------------

def read_interscanmss(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not (parsed.header("from").startswith('"InterScan') or "InterScan" in parsed.header("content-type")
            or " InterScan " in parsed.text):
        return []
    findings: dict[str, Finding] = {}
    current: Finding | None = None
    for line in parsed.text.split("\n"):
        line = line.rstrip()
        session = " <<< " in line or " >>> " in line or "Unable to deliver " in line
        if "@" in line and " <" in line and session:
            address = first_address(line[line.rfind("<"):])
            if address:
                current = findings.setdefault(address.lower(), Finding(recipient=address))
                if "Unable to deliver " in line:
                    current.diagnostic = sweep(line)
        if current is None:
            continue
        if line.startswith("Sent <<< "):
            current.command = find_command(line)
        elif line.startswith("Received >>> "):
            current.diagnostic = sweep(line[13:])
    for finding in findings.values():
        if "Unable to deliver" in finding.diagnostic:
            finding.hint = "userunknown"
    return list(findings.values())


# -- Zoho Mail ---------------------------------------------------------------------------------

def read_zoho(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.has("x-zohomail"):
        return []
    findings: list[Finding] = []
    words: list[str] = []
    for line in _lines_after(parsed.text, "This message was created automatically by mail delivery"):
        if not line.strip() or line.startswith("-----"):
            continue
        if (first_address(line) and "ERROR_CODE :" in line) or line.startswith("[Status: "):
            findings.append(Finding(recipient=first_address(line), diagnostic=sweep(" ".join([*words,
                                                                                              line]))))
            words = []
        elif findings:
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
        else:
            words.append(line)
    for finding in findings:
        if "Host not reachable" in finding.diagnostic:
            finding.hint = "expired"
    return findings


# -- Trustwave MailMarshal -------------------------------------------------------------------------

def read_mailmarshal(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.header("subject").startswith('Undeliverable Mail: "'):
        return []
    error: list[str] = []
    recipients: list[str] = []
    state = ""
    for line in _lines_after(parsed.text, "Your message:"):
        if line.startswith("Could not be delivered because of"):
            state = "error"
        elif line.startswith("The following recipients were affected:"):
            state = "recipients"
        elif state == "recipients" and line.startswith("    ") and first_address(line):
            recipients.append(first_address(line))
        elif state == "error" and line.strip():
            error.append(line)
        elif state == "recipients" and line.strip() and not line.startswith(" "):
            state = ""
    diagnostic = sweep(" ".join(error))
    return [Finding(recipient=r, diagnostic=diagnostic) for r in recipients]


# -- HCL Notes -------------------------------------------------------------------------------------

def read_notes(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.header("subject").startswith("Undeliverable message"):
        return []
    findings: list[Finding] = []
    words: list[str] = []
    for line in _lines_after(parsed.text, "------- Failure Reasons "):
        if line.startswith("------- Returned Message"):
            break
        if "@" in line and " " not in line.strip() and first_address(line) == line.strip():
            findings.append(Finding(recipient=line.strip()))
        elif line.strip() and not line.startswith("-"):
            words.append(line.strip())
    if not findings and first_address(parsed.original("to")):
        findings.append(Finding(recipient=first_address(parsed.original("to"))))
    diagnostic = sweep(" ".join(words))
    for finding in findings:
        finding.diagnostic = diagnostic
        finding.hint = _first([("networkerror", ("Message has exceeded maximum hop count",)),
                               ("userunknown", ("User not listed in public Name & Address Book",
                                                "ディレクトリのリストにありません"))], diagnostic)
    return findings


# -- fml (a mailing list manager) ------------------------------------------------------------------

_FML_TEXTS = [
    ("rejected", (" header may cause mail loop", "NOT MEMBER article from ", "reject mail from ",
                  "reject spammers:", "You are not a member of this mailing list")),
    ("notcompliantrfc", ("Duplicated Message-ID",)), ("securityerror", ("Security alert:",)),
    ("systemerror", (" has detected a loop condition so that", "Loop Back Warning:")),
]
_FML_SUBJECTS = [
    ("rejected", (" are not member", "NOT MEMBER article from ", "reject mail ",
                  "Spam mail from a spammer is rejected")),
    ("systemerror", ("fml system error message", "Loop Alert: ", "Loop Back Warning: ",
                     "WARNING: UNIX FROM Loop")),
    ("securityerror", ("Security Alert",)),
]


def read_fml(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """fml refusing a post: the list's address stands in for the recipient."""
    if not parsed.has("x-mlserver") or "-admin@" not in parsed.header("from") or \
            ".FML" not in parsed.header("message-id"):
        return []
    findings: list[Finding] = []
    for line in parsed.text.split("\n"):
        if line.startswith("Original mail as follows:"):
            break
        if not line.strip():
            continue
        m = re.search(r"<([^<>]+@[^<>]+)>", line)
        if m:
            findings.append(Finding(recipient=m.group(1), diagnostic=line))
        elif findings:
            findings[-1].diagnostic += " " + line
    for finding in findings:
        finding.diagnostic = sweep(finding.diagnostic)
        finding.hint = _first(_FML_TEXTS, finding.diagnostic) or _first(_FML_SUBJECTS,
                                                                        parsed.header("subject"))
    return findings


# -- an MTA nobody has named (Sisimai's X6) ------------------------------------------------------------

def read_x6(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.header("subject").startswith("There was an error sending your mail"):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text, "We had trouble delivering your message. Full details follow:"):
        if line.startswith("The attachment contains the original mail headers"):
            break
        if line.startswith(("The following recipients returned permanent errors: ", "SMTP Server <")):
            tail = line[line.find(": "):] if line.startswith("The following") else line[line.rfind(" <"):]
            address = first_address(tail)
            if address:
                findings.append(Finding(recipient=address, diagnostic=sweep(line),
                                        command=find_command(line)))
    return findings


# -- Microsoft Exchange 2007 and later ----------------------------------------------------------

_EXCHANGE_CODES = {  # Exchange's own error names in "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
    "SMTPSEND.DNS.NonExistentDomain": "hostunknown", "SMTPSEND.DNS.MxLoopback": "networkerror",
    "RESOLVER.ADR.BadPrimary": "systemerror", "RESOLVER.ADR.RecipNotFound": "userunknown",
    "RESOLVER.ADR.RecipientNotFound": "userunknown", "RESOLVER.ADR.ExRecipNotFound": "userunknown",
    "RESOLVER.ADR.RecipLimit": "toomanyconn", "RESOLVER.ADR.InvalidInSmtp": "systemerror",
    "RESOLVER.ADR.Ambiguous": "systemerror", "RESOLVER.RST.AuthRequired": "securityerror",
    "RESOLVER.RST.NotAuthorized": "rejected", "RESOLVER.RST.RecipSizeLimit": "exceedlimit",
    "QUEUE.Expired": "expired",
}
_EXCHANGE_SUBJECTS = ("Undeliverable", "Non_remis_", "Non remis ", "Non recapitabile", "Olevererbart")
_EXCHANGE_START = ("Error Details", "Diagnostic information for administrators:",
                   "Informations de diagnostic pour les administrateurs",
                   "Informazioni di diagnostica per gli amministratori", "Diagnostisk information f")
_EXCHANGE_END = ("Original Message Headers", "Original message headers:", "tes de message d'origine :",
                 "Intestazioni originali del messaggio:", "Ursprungshuvuden:")


def read_exchange2007(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Exchange 2007 and later (and Office 365): the recipient alone on a line under the
    diagnostic information, then "Remote Server returned '550 5.1.1 RESOLVER.ADR.RecipNotFound'"."""
    text = parsed.text
    votes = any(word in parsed.header("subject") for word in _EXCHANGE_SUBJECTS) + any(
        sender in parsed.header("from") for sender in ("postmaster@outlook.com", ".onmicrosoft.com")) + (
            " RESOLVER." in text or " QUEUE." in text) + any(start in text for start in _EXCHANGE_START) + \
        parsed.has("content-language")
    if votes < 2:
        return []
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(_EXCHANGE_START)), -1)
    findings: list[Finding] = []
    if start >= 0:
        for line in lines[start + 1:]:
            if line.startswith(_EXCHANGE_END):
                break
            if not line.strip():
                continue
            if " " not in line.strip() and "@" in line and first_address(line):
                findings.append(Finding(recipient=first_address(line)))
            elif findings and (find_replycode(line) or find_status(line) or "Remote Server " in line):
                findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
    if not findings:
        m = re.search(r"(?m)^\s*Recipient Address:\s*(\S+)", text)
        if m and first_address(m.group(1)):
            findings.append(Finding(recipient=first_address(m.group(1))))
    for finding in findings:
        m = re.search(r"((?:RESOLVER|QUEUE|SMTPSEND)\.[\w.]+);", finding.diagnostic)
        if m:
            finding.hint = _EXCHANGE_CODES.get(m.group(1), "")
    return findings


# -- Courier MTA --------------------------------------------------------------------------------

def read_courier(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not ("Courier mail server at " in parsed.header("from")
            or "NOTICE: mail delivery status." in parsed.header("subject")
            or "WARNING: delayed mail." in parsed.header("subject")
            or parsed.header("message-id").startswith("<courier.")):
        return []
    found = _dsn_or_scan(parsed, senders)
    command = next((find_command(line) for line in parsed.text.split("\n") if line.startswith(">>> ")), "")
    table = [("hostunknown", ("No such domain.",)),
             ("systemerror", ("This domain's DNS violates RFC 1035.",)),
             ("networkerror", ("DNS lookup failed.",))]
    for finding in found:
        finding.command = command or finding.command
        finding.hint = _first(table, finding.diagnostic)
    return found


def _dsn_or_scan(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """The recipients of the DSN with their Diagnostic-Code, or those the notice names."""
    found = []
    for block in parsed.dsn_recipients:
        address = first_address(block.get("final-recipient") or block.get("original-recipient"))
        if address:
            code = block.get("diagnostic-code")
            found.append(Finding(recipient=address, diagnostic=sweep(code.split(";", 1)[-1])))
    return found or scan_text(parsed.text, senders)


# -- Oracle Communications Messaging Server ------------------------------------------------------------

def read_messagingserver(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if "Boundary_(ID_" not in parsed.header("content-type") and \
            not parsed.header("subject").startswith("Delivery Notification: "):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text, "This report relates to a message you sent with the following"):
        m = re.match(r"^  (?:Recipient|Original) address: (\S+@\S+\.\S+)", line)
        if m:
            address = first_address(m.group(1))
            if address and not (findings and findings[-1].recipient == address):
                findings.append(Finding(recipient=address))
        elif findings and line.startswith("  Diagnostic code: "):
            code = line.split(":", 1)[1].strip()
            findings[-1].spec, _, diagnostic = code.partition(";") if ";" in code else ("", "", code)
            findings[-1].spec = findings[-1].spec.upper()
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {diagnostic}")
        elif findings and line.startswith("  Reason: ") and not findings[-1].diagnostic:
            findings[-1].context = sweep(line.split(":", 1)[1])
    for finding in findings:
        if "Illegal host/domain name found" in finding.diagnostic:
            finding.hint = "hostunknown"
    return findings


# -- GMX, 1&1 ---------------------------------------------------------------------------------------

def read_gmx(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.has("x-gmx-antispam"):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text, "This message was created automatically by mail delivery software"):
        if line.startswith("--- The header of the original message is following. ---"):
            break
        if not line.strip():
            continue
        if "@" in line and line.startswith(('"', "<")):
            findings.append(Finding(recipient=first_address(line)))
        elif findings and line.startswith("SMTP error "):
            findings[-1].command = find_command(line)
        elif findings and line.startswith("host: "):
            findings[-1].rhost = line[6:].strip()
        elif findings:
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
    for finding in findings:
        if "delivery retry timeout exceeded" in finding.diagnostic:
            finding.hint = "expired"
    return [f for f in findings if f.recipient]


def read_einsundeins(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if not parsed.header("from").startswith('"Mail Delivery System"') or \
            parsed.header("subject") != "Mail delivery failed: returning message to sender":
        return []
    findings: list[Finding] = []
    loose: list[str] = []
    for line in _lines_after(parsed.text, "This message was created automatically by mail delivery software"):
        if line.startswith("--- The header of the original message is following. ---"):
            break
        if not line.strip():
            continue
        stripped = line.strip()
        if "@" in stripped and (stripped.endswith(":") or " " not in stripped) and first_address(stripped):
            findings.append(Finding(recipient=first_address(stripped)))
        elif findings and (stripped.startswith("For the following reason:") or findings[-1].diagnostic):
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {stripped}")
        else:
            loose.append(stripped)
    for finding in findings:
        finding.diagnostic = finding.diagnostic or sweep(" ".join(loose))
        finding.command = find_command(finding.diagnostic)
        if "host: " in finding.diagnostic and " reason:" in finding.diagnostic:
            finding.status = find_status(finding.diagnostic)
            if "for TEXT command" in finding.diagnostic:
                finding.command = "DATA"
        if "Mail size limit exceeded" in finding.diagnostic:
            finding.hint = "mesgtoobig"
    return findings


# -- au by KDDI ---------------------------------------------------------------------------------------

def read_kddi(parsed: Parsed, senders: set[str]) -> list[Finding]:
    sender, reply_to = parsed.header("from"), parsed.header("reply-to")
    if not ("no-reply@." in sender or ".dion.ne.jp" in sender or "no-reply@app.auone-net.jp" in reply_to
            or any("ezweb.ne.jp (" in r or ".au.com (" in r for r in parsed.header_all("received"))):
        return []
    findings: list[Finding] = []
    reading = False
    for line in parsed.text.split("\n"):
        if line.startswith(("Your mail sent on:", "Your mail attempted to be delivered on:")):
            reading = True
        if not reading or not line.strip():
            continue
        if " Could not be delivered to: <" in line:
            address = first_address(line.split(": <", 1)[1])
            if address:
                findings.append(Finding(recipient=address))
        elif findings and line.startswith(" "):
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
    table = [("mailboxfull", ("As their mailbox is full",)),
             ("norelaying", ("Due to the following SMTP relay error",)),
             ("hostunknown", ("As the remote domain doesnt exist",))]
    for finding in findings:
        finding.command = find_command(finding.diagnostic)
        if parsed.header("x-spasign") == "NG":
            finding.hint = "filtered"
        elif finding.command != "RCPT":
            finding.hint = _first(table, finding.diagnostic)
    return findings


# -- Digital Arts m-FILTER --------------------------------------------------------------------------

def read_mfilter(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if parsed.header("subject") != "failure notice" or parsed.header("x-mailer") != "m-FILTER":
        return []
    findings: list[Finding] = []
    section = ""
    for line in parsed.text.split("\n"):
        line = line.rstrip()
        if line.startswith(("-------original message", "-------original mail info")):
            break
        if line == "-------server message":
            section = "error"
        elif line == "-------SMTP command":
            section = "command"
        elif "@" in line and " " not in line and first_address(line) == line:
            findings.append(Finding(recipient=line))
        elif findings and line.strip() and section == "error" and not findings[-1].diagnostic:
            findings[-1].diagnostic = sweep(line)
            section = ""
        elif findings and line.strip() and section == "command":
            findings[-1].command = find_command(line) or findings[-1].command
            section = ""
    return findings


# -- BIGLOBE and other Japanese ISPs on its software ----------------------------------------------------

def read_biglobe(parsed: Parsed, senders: set[str]) -> list[Finding]:
    sender = parsed.header("from")
    if "postmaster@" not in sender or not parsed.header("subject").startswith("Returned mail:") or \
            not re.search(r"@(?:biglobe|inacatv|tmtv|ttv)\.ne\.jp", sender):
        return []
    findings: list[Finding] = []
    for line in _lines_after(parsed.text, "   ----- The following addresses had delivery problems -----"):
        if "@" in line and " " not in line.strip() and first_address(line):
            findings.append(Finding(recipient=first_address(line)))
        elif findings and line.strip() and "--" not in line:
            findings[-1].diagnostic = sweep(f"{findings[-1].diagnostic} {line}")
    table = [("filtered", ("Mail Delivery Failed... User unknown",)),
             ("mailboxfull", ("The number of messages in recipient's mailbox exceeded the local limit.",))]
    for finding in findings:
        finding.hint = _first(table, finding.diagnostic)
    return findings


# -- Google Workspace (its own refusals, not a remote server's) -------------------------------------------

def read_googleworkspace(parsed: Parsed, senders: set[str]) -> list[Finding]:
    if parsed.dsn_recipients or "<mailer-daemon@googlemail.com>" not in parsed.header("from").lower() or \
            "Delivery Status Notification" not in parsed.header("subject"):
        return []
    lines = parsed.text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("** ")), -1)
    recipient = first_address(parsed.original("to"))
    if start < 0 or not recipient:
        return []
    diagnostic = sweep(" ".join(line for line in lines[start:] if not line.startswith("Content-Type:")))
    hint = "userunknown" if "because the address couldn't be found. Check for typos" in diagnostic else ""
    return [Finding(recipient=recipient, diagnostic=diagnostic, hint=hint)]


# In the order they are tried, and whether a reader's findings replace the message's DSN.
READERS: list[tuple[Callable[[Parsed, set[str]], list[Finding]], bool]] = [
    # Recognised by headers or words only they write, first; qmail's Received line and the
    # generic shapes last.
    (read_amazonses_json, True), (read_exim, False), (read_exchange2007, False), (read_exchange2003, False),
    (read_interscanmss, False), (read_kddi, False), (read_fml, False), (read_verizon, False),
    (read_apachejames, False), (read_postfix, False), (read_opensmtpd, True), (read_qmail, False),
    (read_courier, False), (read_messagingserver, False), (read_googleworkspace, False), (read_gmail, False),
    (read_gmx, False), (read_biglobe, False),
    (read_zoho, False), (read_domino, False), (read_notes, False), (read_imailserver, False),
    (read_mfilter, False), (read_mailmarshal, False), (read_ezweb, False), (read_einsundeins, False),
    (read_dragonfly, False), (read_x1, False), (read_x3, False), (read_x6, False),
    (read_google_groups, False),
]
