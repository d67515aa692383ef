"""The pipeline: structure (parse) -> recipients (DSN fields, vendor formats, text)
-> per recipient status, reply code, command, reason and hard/soft."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from smtpeter.bounces import formats, remote, scan
from smtpeter.bounces.codes import find_command, find_replycode, find_status, is_status, prefer_status
from smtpeter.bounces.parse import Parsed, parse_message
from smtpeter.bounces.reasons import Facts, decide, is_hard, is_temporary, normalized, pseudo_status
from smtpeter.bounces.scan import Finding, addresses_in, first_address, sweep


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    status: str           # enhanced status code; X.0.9NN when the message had none (Sisimai's)
    replycode: str        # SMTP reply code, "" if none
    diagnostic: str       # the remote server's (or the MTA's) words, one line
    command: str          # the SMTP command that failed, if said: CONN, EHLO, MAIL, RCPT, DATA, ...
    reason: str
    hardbounce: bool
    feedbacktype: str = ""
    action: str = ""      # failed, delayed, delivered, expanded, relayed ("" if not said)
    remote_mta: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Original:
    """What the report says of the message it is about."""

    message_id: str = ""
    envelope_sender: str = ""
    envelope_id: str = ""        # the DSN ENVID (Original-Envelope-Id)
    sender: str = ""             # its From address
    recipients: tuple[str, ...] = ()
    subject: str = ""
    x_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    kind: str                    # bounce, response, abuse, undefined
    recipients: list[RecipientResult]
    original: Original
    return_path: str = ""        # of the report itself: where it was sent (our VERP address)
    to: tuple[str, ...] = ()
    sender: str = ""             # its From address
    subject: str = ""
    reporting_mta: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery|mail administrator|mailer_daemon|"
                     r"mdaemon|bounce|notification|no-?reply|mail system|symantec|messagelabs", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|report|problem|has failed)|"
    r"returned mail|mail delivery|failure notice|non[- ]?delivery|could not be delivered|delivery final|"
    r"not delivered|rejected|nicht zustellbar|unzustellbar|non remis|non recapitabile|no se puede entregar|"
    r"message (?:not delivered|failure|delivery)|mail failure|failed mail|delivery error|warning: could not|"
    r"bounce|error sending|unable to deliver|delivery notification|permanent error|delivery unsuccessful|"
    r"there was an error|mail could not|notice|frozen|postmaster|delayed mail|delivery delayed|"
    r"mail system error|returned to sender|mail-system|undeliverable", re.I)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ _-]?(?:reply|response|antwort|risposta|respuesta|r[ée]ponse)|auto:|"
    r"out of (?:the )?office|abwesenheit|absence|vacation|on leave|away from|r[ée]ponse automatique|"
    r"respuesta autom[aá]tica|risposta automatica|automatisch|autoreply|autoresponse|fuera de la oficina|"
    r"office closed|i am out|i'm out|ooo\b)", re.I)


def classify(message: bytes) -> Report:
    """What ``message`` (a whole received message, as bytes) is, and why, per recipient.

    Never raises on what it is given: a message it cannot make sense of is
    ``undefined`` with no recipients.
    """
    parsed = parse_message(message)
    feedback = _feedback(parsed)
    if feedback is not None:
        return _report("abuse", feedback, parsed)
    findings = _bounce_findings(parsed)
    if findings:
        results = [_finish(f, parsed) for f in findings]
        # Amazon SES sends its complaints as a notification, not as ARF.
        kind = "abuse" if all(r.reason == "feedback" for r in results) else "bounce"
        return _report(kind, results, parsed)
    if _is_auto_reply(parsed):
        return _report("response", [_auto_reply(parsed)], parsed)
    return _report("undefined", [], parsed)


def _report(kind: str, recipients: list[RecipientResult], parsed: Parsed) -> Report:
    return Report(
        kind=kind,
        recipients=recipients,
        original=_original(parsed),
        return_path=first_address(parsed.header("return-path")),
        to=tuple(addresses_in(parsed.header("to"))),
        sender=first_address(parsed.header("from")),
        subject=parsed.header("subject"),
        reporting_mta=_value_of(parsed.dsn_message.get("reporting-mta", "")),
    )


def _value_of(field_value: str) -> str:
    """The value of a typed DSN field: "rfc822; a@b" -> "a@b"."""
    return field_value.split(";", 1)[1].strip() if ";" in field_value else field_value.strip()


def _original(parsed: Parsed) -> Original:
    x_headers = {name: value for name, value in parsed.original_headers if name.lower().startswith("x-")}
    complaint = parsed.feedback or {}
    envelope_sender = (first_address(parsed.dsn_message.get("x-postfix-sender", ""))
                       or first_address(" ".join(complaint.get("original-mail-from", [])))
                       or first_address(parsed.original("return-path")))
    recipients = tuple(addresses_in(parsed.original("to")))
    message_id = parsed.original("message-id").strip()
    m = re.search(r"<([^<>\s]+)>", message_id)
    return Original(
        message_id=m.group(1) if m else message_id,
        envelope_sender=envelope_sender,
        envelope_id=parsed.dsn_message.get("original-envelope-id", ""),
        sender=first_address(parsed.original("from")),
        recipients=recipients,
        subject=parsed.original("subject"),
        x_headers=x_headers,
    )


# -- complaints --------------------------------------------------------------------------------


def _feedback(parsed: Parsed) -> list[RecipientResult] | None:
    fields = parsed.feedback
    if fields is None:
        if not re.search(r"report-type=\"?feedback-report", parsed.header("content-type"), re.I):
            return None
        fields = {}
    kind = (fields.get("feedback-type") or ["abuse"])[0].strip().lower() or "abuse"
    recipients = [first_address(v) for v in fields.get("original-rcpt-to", []) if first_address(v)]
    if not recipients:
        recipients = [a for a in addresses_in(parsed.original("to"))]
    if not recipients:
        recipients = [first_address(v) for v in fields.get("removal-recipient", []) if first_address(v)]
    if not recipients:
        recipients = [""]
    diagnostic = sweep(parsed.text)[:500]
    return [RecipientResult(recipient=r, status="", replycode="", diagnostic=diagnostic, command="",
                            reason="feedback", hardbounce=False, feedbacktype=kind) for r in recipients]


# -- auto-replies ------------------------------------------------------------------------------


def _is_auto_reply(parsed: Parsed) -> bool:
    sender = parsed.header("from").lower()
    subject = parsed.header("subject")
    if re.search(r"mailer-daemon|postmaster|root@", sender):
        return False  # a daemon's notice, not a person's auto-reply
    if re.search(r"mail failure -|security information for", subject, re.I):
        return False  # Exim's failure notices, sudo's reports
    auto_submitted = parsed.header("auto-submitted").lower()
    if auto_submitted.startswith(("auto-replied", "auto-generated", "auto-notified")):
        return True
    if parsed.header("precedence").lower().startswith("auto_reply"):
        return True
    if parsed.header("x-autoreply") or parsed.header("x-autorespond") or parsed.header("x-autoreply-from"):
        return True
    if "vacation" in parsed.header("x-apple-action").lower():
        return True
    return bool(_AUTO_SUBJECT.search(subject))


def _auto_reply(parsed: Parsed) -> RecipientResult:
    who = first_address(parsed.header("from")) or first_address(parsed.header("return-path"))
    return RecipientResult(recipient=who, status="", replycode="", diagnostic=sweep(parsed.text)[:500],
                           command="", reason="vacation", hardbounce=False)


# -- bounces -----------------------------------------------------------------------------------


def _senders(parsed: Parsed) -> set[str]:
    """Addresses that are the bounced message's sender, never its failed recipient."""
    found = set()
    for value in (parsed.header("to"), parsed.original("from"), parsed.original("return-path"),
                  parsed.dsn_message.get("x-postfix-sender", ""), parsed.original("reply-to")):
        found.update(address.lower() for address in addresses_in(value))
    return found


def _looks_like_bounce(parsed: Parsed) -> bool:
    return bool(
        parsed.dsn_recipients
        or "report-type=delivery-status" in parsed.header("content-type").lower().replace('"', "")
        or _DAEMON.search(parsed.header("from"))
        or _BOUNCE_SUBJECT.search(parsed.header("subject"))
        or parsed.header("return-path").strip() in ("<>", "")
        or parsed.has_original_part
    )


def _bounce_findings(parsed: Parsed) -> list[Finding]:
    """Who the notice is about and what it says of each, from the best source there is."""
    senders = _senders(parsed)
    vendor = formats.vendor_findings(parsed, senders)
    if not vendor[0] and not _looks_like_bounce(parsed):
        return []  # the vendor formats know their own notices; anything else must look like one
    found = _read(parsed, senders, vendor)
    if not found and parsed.inner is not None:
        # A gateway that wrapped the real report in a message of its own.
        found = _read(parsed.inner, _senders(parsed.inner))
    if not found and not (_is_auto_reply(parsed) and not _DAEMON.search(parsed.header("from"))):
        found = scan.fallback_findings(parsed, senders)
    return found


def _read(parsed: Parsed, senders: set[str], read: tuple[list[Finding], bool] | None = None) -> list[Finding]:
    vendor, over_dsn = read if read is not None else formats.vendor_findings(parsed, senders)
    dsn = _dsn_findings(parsed)
    if vendor and (over_dsn or not dsn):
        if not dsn:
            _adopt_dsn_fields(vendor, parsed)
        return vendor
    if dsn:
        merged = _merge(dsn, vendor or _text_findings(parsed, senders), parsed)
        if len(merged) == 1 and not vendor and not _known_mta(parsed):
            # A DSN from an MTA we know nothing particular of: the whole notice is evidence
            # (a local delivery agent's complaint above the report, say).
            merged[0].extra["notice"] = sweep(parsed.text)
        return merged
    if _is_auto_reply(parsed) and not _DAEMON.search(parsed.header("from")):
        return []
    found = _text_findings(parsed, senders)
    return [f for f in found if f.diagnostic or len(found) == 1]


def _known_mta(parsed: Parsed) -> bool:
    """Postfix and Sendmail notices: their text says about each recipient what the DSN does."""
    subject = parsed.header("subject")
    return (subject == "Undelivered Mail Returned to Sender" or subject.endswith("see transcript for details")
            or subject.startswith("Warning: ") or "This is the mail system at host" in parsed.text
            or "The Postfix program" in parsed.text)


def _adopt_dsn_fields(vendor: list[Finding], parsed: Parsed) -> None:
    """DSN blocks whose recipient is no address (a pipe, a file): their Status and Action still
    belong to the recipients the notice names, in the same order."""
    blocks = parsed.dsn_recipients
    if len(blocks) != len(vendor):
        return
    for finding, block in zip(vendor, blocks, strict=True):
        finding.status = finding.status or find_status(block.get("status").split("(")[0])
        if not finding.action and block.get("action").split():
            finding.action = block.get("action").split()[0].lower()


def _text_findings(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Recipients in the notice: lines that name them, and a session transcript if there is one."""
    found = scan.scan_text(parsed.text, senders) or scan.scan_text(parsed.text, set())
    if not scan.has_transcript(parsed.text) and "Transcript of session follows" not in parsed.text:
        return found
    by_address = {f.recipient.lower(): f for f in found}
    transcript, _ = scan.scan_transcript(parsed.text, senders)
    for finding in transcript:
        known = by_address.get(finding.recipient.lower())
        if known is None:
            found.append(finding)
            by_address[finding.recipient.lower()] = finding
            continue
        known.command = known.command or finding.command
        known.extra["transcript"] = finding.diagnostic
        if not scan.has_code(known.diagnostic):
            known.diagnostic = finding.diagnostic
    if len(found) == 1 and not found[0].extra.get("transcript"):
        found[0].extra["transcript"] = scan.server_replies(parsed.text)
    return found


_POWERMTA_CATEGORIES = {
    "bad-domain": "hostunknown", "bad-mailbox": "userunknown", "inactive-mailbox": "suspend",
    "message-expired": "expired", "no-answer-from-host": "networkerror", "policy-related": "policyviolation",
    "quota-issues": "mailboxfull", "routing-errors": "systemerror", "spam-related": "spamdetected",
}


def _dsn_findings(parsed: Parsed) -> list[Finding]:
    findings = []
    for block in parsed.dsn_recipients:
        recipient = (first_address(block.get("final-recipient"))
                     or first_address(block.get("original-recipient"))
                     or first_address(block.get("x-actual-recipient")))
        if not recipient:
            continue
        code = block.get("diagnostic-code")
        spec, diagnostic = ("", code)
        m = re.match(r"^\s*([A-Za-z][\w\-]*)\s*;\s*(.*)$", code, re.S)
        if m:
            spec, diagnostic = m.group(1), m.group(2)
        status_field = block.get("status")
        status = find_status(status_field.split("(")[0]) if status_field else ""
        m = re.search(r"\((.*)\)", status_field)
        comment = m.group(1) if m else ""
        action = block.get("action").split()
        findings.append(Finding(
            recipient=recipient,
            diagnostic=sweep(diagnostic),
            status=status,
            action=action[0].lower() if action else "",
            spec="SMTP" if spec.upper() == "X-POSTFIX" else spec.upper(),
            rhost=_value_of(block.get("remote-mta")),
            hint=_POWERMTA_CATEGORIES.get(block.get("x-powermta-bouncecategory").strip().lower(), ""),
            context=sweep(comment),
            extra={"original": first_address(block.get("original-recipient")),
                   "actual": first_address(block.get("x-actual-recipient")), "comment": sweep(comment)},
        ))
    return findings


def _merge(dsn: list[Finding], text: list[Finding], parsed: Parsed) -> list[Finding]:
    """DSN fields first; the notice fills in what they leave out: an empty or bare-number
    Diagnostic-Code, the failed command, a more specific code, and the same error with more
    around it ("... (in reply to RCPT TO command)")."""
    by_address = {f.recipient.lower(): f for f in text if f.recipient}
    transcript = scan.has_transcript(parsed.text) or "Transcript of session follows" in parsed.text
    loose = scan.scan_transcript(parsed.text, set())[1] if transcript else ""
    for finding in dsn:
        names = [finding.recipient, finding.extra.get("original", ""), finding.extra.get("actual", "")]
        match = next((by_address[n.lower()] for n in names if n and n.lower() in by_address), None)
        if match is None and len(dsn) == 1 and len(text) == 1:
            match = text[0]
        if match is not None:
            _fill_from_notice(finding, match)
        elif not finding.diagnostic and len(dsn) == 1:
            finding.context = sweep(f"{finding.context} {parsed.text}")
        if loose and (not finding.diagnostic or finding.diagnostic.isdigit()):
            finding.diagnostic = loose  # Sendmail: "554 5.3.0 unknown mailer error 255" beats "255"
        if transcript and len(dsn) == 1:
            # Sendmail: every reply of the session explains the DSN's terse Diagnostic-Code.
            finding.extra["transcript"] = scan.server_replies(parsed.text)
    return dsn


def _fill_from_notice(finding: Finding, match: Finding) -> None:
    notice = match.diagnostic
    if not finding.diagnostic or finding.diagnostic.isdigit():
        finding.diagnostic = notice or finding.diagnostic
    elif notice and normalized(notice) != normalized(finding.diagnostic):
        if normalized(finding.diagnostic) in normalized(notice) and scan.has_code(notice):
            finding.diagnostic = notice
        else:
            finding.context = sweep(f"{finding.context} {notice}")
    if not finding.status or finding.status[1:] == ".0.0":
        specific = find_status(notice)
        if specific and specific[1:] != ".0.0":
            finding.status = specific
    finding.command = finding.command or match.command or find_command(notice)
    finding.hint = finding.hint or match.hint


# Real diagnostics are a few hundred characters; a huge one is junk that would only cost time.
_EVIDENCE_LIMIT = 20_000
_DIAGNOSTIC_LIMIT = 2_000


def _finish(f: Finding, parsed: Parsed) -> RecipientResult:
    diagnostic = _clean_diagnostic(f.diagnostic)[:_EVIDENCE_LIMIT]
    text = diagnostic or sweep(f.context)
    notice = f.extra.get("notice", "")
    if notice:
        text = notice if normalized(text) in normalized(notice) else sweep(f"{notice} {text}")
    comment = f.extra.get("comment", "")
    if comment and normalized(comment) not in normalized(text):
        text = sweep(f"{comment} {text}")  # "Status: 5.2.1 (mailbox disabled, not accepting messages)"
    text = text[:_EVIDENCE_LIMIT]
    replies = f.extra.get("transcript", "")
    if replies and normalized(replies) not in normalized(text):
        # Sendmail: what the remote server said in the session explains the DSN's terse code.
        text = sweep(f"{replies} {text}")
    field = f.status if is_status(f.status) else ""
    found = find_status(text)
    replycode = f.replycode or find_replycode(text, found or field)
    status = prefer_status(field, found, replycode)
    replycode = f.replycode or find_replycode(text, status)
    text = _without_continuations(text, replycode, found)
    diagnostic = _without_continuations(diagnostic, replycode, found)
    command = f.command or find_command(f"{diagnostic} {f.context}")
    facts = Facts(status=status, replycode=replycode, diagnostic=text, command=command,
                  action=f.action, spec=f.spec or ("SMTP" if text else ""), hint=f.hint,
                  rhost=f.rhost or _host_in(text), destination=f.recipient.rsplit("@", 1)[-1].lower())
    reason = decide(facts, remote.rules_for(facts, parsed))
    hard = is_hard(reason, status, text) if reason not in ("delivered", "feedback", "vacation") else False
    if not status or (f.extra.get("pseudo") and status[1:] == ".0.0"):
        temporary = bool(f.extra.get("temporary")) or is_temporary(f"{replycode} {text}")
        status = pseudo_status(reason, temporary) or status
    if reason == "delivered":
        replycode = replycode if replycode.startswith("2") else ""
    elif replycode and status and replycode[0] != status[0]:
        replycode = find_replycode(text, status)
        if replycode[:1] != status[:1]:
            replycode = ""
    action = f.action
    if reason == "expired" and not action:
        action = "delayed"
    if not action and status[:1] in ("4", "5"):
        action = "failed"
    return RecipientResult(recipient=f.recipient, status=status, replycode=replycode,
                           diagnostic=diagnostic[:_DIAGNOSTIC_LIMIT],
                           command=command, reason=reason, hardbounce=hard, feedbacktype=f.feedbacktype,
                           action=action, remote_mta=f.rhost)


def _without_continuations(text: str, replycode: str, status: str) -> str:
    """A multi-line reply read as one line: "550-5.7.1 Our system ... 550-5.7.1 likely unsolicited"
    without the repeated codes between its words, once at its head."""
    if not replycode or f"{replycode}-" not in text:
        return text
    for separator in ("-", " "):
        if status:
            text = text.replace(f"{replycode}{separator}{status}", "")
        text = text.replace(f"{replycode}{separator}", "")
    return sweep(f"{replycode} {status} {text}" if status else f"{replycode} {text}")


_NAMED_HOST = re.compile(
    r"\b(?:host|by|from|server|mx)\s+\[?"
    r"([a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9\-]+)+\.[a-z]{2,})", re.I)


def _host_in(text: str) -> str:
    """The remote host a diagnostic names: "host mx.example.com[192.0.2.1] said", "by mx.example.com"."""
    m = _NAMED_HOST.search(text)
    return m.group(1).lower() if m else ""


def _clean_diagnostic(text: str) -> str:
    text = re.sub(r"(?is)<html>.*?</html>", " ", text or "")
    return sweep(text)


def reason_for(status: str, replycode: str, diagnostic: str, command: str = "", remote_host: str = "",
               recipient: str = "") -> tuple[str, bool]:
    """The reason, and whether it is a hard bounce, of a reply we got ourselves while delivering.

    ``status`` and ``replycode`` may be empty: they are then looked for in
    ``diagnostic`` (the server's reply text). ``command`` is the SMTP command the
    reply answered ("RCPT", "DATA", ...), ``remote_host`` the MX that answered and
    ``recipient`` the address, when known: big providers' own rules apply by them.
    """
    text = " ".join(str(diagnostic or "").split())
    found = find_status(text)
    status = status if is_status(status) else found
    replycode = replycode or find_replycode(text, status)
    if not status and replycode[:1] in ("4", "5") and not text:
        text = replycode
    facts = Facts(status=status, replycode=replycode, diagnostic=text, command=(command or "").upper(),
                  spec="SMTP", rhost=remote_host.lower().strip("."),
                  destination=recipient.rsplit("@", 1)[-1].lower() if "@" in recipient else "")
    reason = decide(facts, remote.rules_for(facts))
    if reason in ("onhold", "undefined") and replycode in ("521", "556"):
        reason = "notaccept"  # RFC 7504: the host or the domain takes no mail at all
    return reason, is_hard(reason, status or replycode, text)
