"""The structure of a returned message: its headers, the human-readable notice, the
RFC 3464 delivery-status fields, an RFC 5965 feedback report, and the headers of
the original message it returns.

Real bounces bend every rule: DSN fields in a text/plain body, the original
message pasted after a line of dashes, base64 everywhere, HTML-only notices,
iso-2022-jp. ``parse_message`` reads them all into one ``Parsed``; nothing
here decides what the message means.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32

# Parts whose body we read as text ourselves; renamed before parsing so the email
# package leaves them whole (it would parse a base64 delivery-status as headers).
_OPAQUE_TYPES = re.compile(
    rb"(?im)^(content-type:[ \t]*)message/(delivery-status|global-delivery-status|feedback-report"
    rb"|rfc822-headers|global-headers|rfc822|global|partial)\b"
)
_RENAMED = "text/x-bounce-"

# RFC 3464 field names (and the X- ones MTAs add) that start a line of a DSN.
DSN_FIELDS = {
    "reporting-mta", "dsn-gateway", "received-from-mta", "arrival-date", "original-envelope-id",
    "final-recipient", "original-recipient", "action", "status", "remote-mta", "diagnostic-code",
    "last-attempt-date", "final-log-id", "will-retry-until", "x-actual-recipient", "x-original-message-id",
    "x-postfix-queue-id", "x-postfix-sender", "x-sendmail-queue-id", "x-supplementary-info",
    "x-display-name", "x-mailer-daemon-error", "x-amzn-ses-sender",
}
_PER_RECIPIENT = {
    "final-recipient", "original-recipient", "action", "status", "remote-mta", "diagnostic-code",
    "last-attempt-date", "final-log-id", "will-retry-until", "x-actual-recipient", "x-supplementary-info",
    "x-display-name",
}
_DSN_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9\-]*)[ \t]*:[ \t]*(.*)$")

# Lines that announce the returned message in a plain-text bounce.
_ORIGINAL_MARKER = re.compile(
    r"^[ \t>]*(?:[-=*_#]{2,}.*)?(?:"
    r"(?:this is |here is |below is |attached is )?(?:a |the )?(?:full )?copy of (?:the |your |my )?"
    r"(?:original |returned )?(?:message|mail)(?:'s)?(?: headers?)?(?:, including all the headers)?"
    r"|below this line is a copy of the message"
    r"|(?:original|returned|undelivered|unsent|failed|rejected) message"
    r"(?: follows| below|\b.{0,20}(?:headers?|text))?"
    r"|(?:message|original|returned) headers?(?: of (?:the )?(?:original )?message)?"
    r"(?: (?:are |is )?follows?\.?)?"
    r"|the (?:header|headers) of (?:the |your )?original message"
    r"|the original message (?:was|is|headers?)"
    r"|text of (?:the )?(?:original |returned )?message"
    r"|this is the (?:header|headers) of (?:the )?original message"
    r"|content-type: (?:message/rfc822|text/rfc822-headers)"
    r"|include[sd]? (?:the )?(?:original )?(?:message )?headers?"
    r")[-=*_#:. \t]*$",
    re.I,
)
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9\-]{1,40}):[ \t]?(.*)$")
_ORIGINAL_HEADER_NAMES = {
    "received", "return-path", "from", "to", "subject", "date", "message-id", "mime-version",
    "content-type", "dkim-signature", "reply-to", "cc", "x-mailer", "delivered-to", "sender",
    "list-id", "x-original-to", "references", "in-reply-to", "content-transfer-encoding", "user-agent",
    "x-received", "x-google-dkim-signature", "domainkey-signature", "thread-topic",
    "x-ms-exchange-organization-scl",
}


@dataclass
class DsnRecipient:
    """One per-recipient block of a delivery-status report; field names lower case."""

    fields: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


@dataclass
class Parsed:
    headers: list[tuple[str, str]]
    content_type: str
    text: str = ""                      # the notice a person reads (plain text, LF, no tabs)
    dsn_message: dict[str, str] = field(default_factory=dict)
    dsn_recipients: list[DsnRecipient] = field(default_factory=list)
    feedback: dict[str, list[str]] | None = None
    original_headers: list[tuple[str, str]] = field(default_factory=list)
    original_text: str = ""             # the returned message (or its headers) as text
    has_original_part: bool = False     # a message/rfc822 or text/rfc822-headers part was there
    inner: Parsed | None = None         # a bounce returned inside the returned message

    def header(self, name: str) -> str:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), "")

    def has(self, name: str) -> bool:
        name = name.lower()
        return any(key.lower() == name for key, _ in self.headers)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def original(self, name: str) -> str:
        name = name.lower()
        return next((value for key, value in self.original_headers if key.lower() == name), "")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; the value as it was when they cannot be."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return value


def _unfolded(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    assert isinstance(payload, bytes)
    charset = (part.get_content_charset() or "").lower()
    for candidate in (charset, "utf-8", "cp1252"):
        if not candidate:
            continue
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def tidy(text: str) -> str:
    """LF line ends, tabs as spaces, no NULs."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ").replace("\x00", "")


def html_to_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li|h\d|table)>", "\n", markup)
    markup = re.sub(r"(?s)<[^>]*>", " ", markup)
    text = html.unescape(markup)
    return "\n".join(re.sub(r"[ \t\xa0]+", " ", line).strip() for line in text.split("\n"))


def parse_headers(text: str) -> list[tuple[str, str]]:
    """Header fields of ``text`` up to the first empty line, unfolded and decoded; junk lines skipped."""
    fields: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        m = _HEADER_LINE.match(line)
        if m:
            fields.append((m.group(1), m.group(2).strip()))
    return [(name, decode_words(value)) for name, value in fields]


def parse_dsn_fields(text: str) -> tuple[dict[str, str], list[DsnRecipient]]:
    """The per-message fields and the per-recipient blocks of delivery-status text.

    Blocks are split at blank lines as RFC 3464 says, and also wherever a second
    Final-Recipient starts (some MTAs leave the blank lines out). Continuation
    lines of Diagnostic-Code (and of any field) are joined to it.
    """
    per_message: dict[str, str] = {}
    recipients: list[DsnRecipient] = []
    current: dict[str, str] | None = None
    last: str | None = None
    for line in tidy(text).split("\n"):
        if not line.strip():
            if current:
                recipients.append(DsnRecipient(current))
                current = None
            last = None
            continue
        if line[0] == " " and last is not None:
            target = current if current is not None and last in current else per_message
            if last in target:
                target[last] += " " + line.strip()
            continue
        m = _DSN_LINE.match(line)
        if not m:
            last = None
            continue
        name, value = m.group(1).lower(), m.group(2).strip()
        if name in _PER_RECIPIENT or (current is not None and name not in DSN_FIELDS):
            # A field seen twice in a block starts the next recipient (some MTAs leave out
            # the blank line between recipients).
            if current is None or (name in ("final-recipient", "original-recipient",
                                            "action") and name in current):
                if current:
                    recipients.append(DsnRecipient(current))
                current = {}
            if name not in current:
                current[name] = value
            last = name
        else:
            if name not in per_message:
                per_message[name] = value
            last = name
    if current:
        recipients.append(DsnRecipient(current))
    # A block with no recipient field at all is not a recipient (a stray Status: line).
    recipients = [r for r in recipients if r.get("final-recipient") or r.get("original-recipient")
                  or r.get("x-actual-recipient")]
    return per_message, recipients


def split_original(text: str) -> tuple[str, str]:
    """A plain-text bounce split into the notice and the returned message (or "")."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if index and len(line) < 200 and _ORIGINAL_MARKER.match(line.strip()):
            rest = "\n".join(lines[index + 1:])
            if _looks_like_headers(rest) or not rest.strip() or re.search(r"(?im)^(?:from|subject|to):",
                                                                          rest):
                return "\n".join(lines[:index]), rest.lstrip("\n")
    # No marker: the first run of header lines (Return-Path/Received/From...) after the notice.
    for index in range(1, len(lines)):
        if not lines[index - 1].strip() or lines[index - 1].startswith(("---", "===", "***")):
            m = _HEADER_LINE.match(lines[index])
            if m and m.group(1).lower() in _ORIGINAL_HEADER_NAMES and _looks_like_headers(
                    "\n".join(lines[index:index + 12])):
                return "\n".join(lines[:index]), "\n".join(lines[index:])
    return text, ""


def _looks_like_headers(text: str) -> bool:
    names = []
    for line in text.lstrip("\n").split("\n")[:15]:
        if not line.strip():
            break
        m = _HEADER_LINE.match(line)
        if m:
            names.append(m.group(1).lower())
        elif line[0] not in " \t":
            return False
    known = [name for name in names if name in _ORIGINAL_HEADER_NAMES or name.startswith("x-")]
    dsn = [name for name in names if name in DSN_FIELDS]
    # "Subject:" and "Date:" alone are how notices quote the message, not its header.
    strong = [name for name in known if name not in ("subject", "date", "sent", "cc")]
    return len(known) >= 2 and bool(strong) and len(dsn) < len(known)


def parse_message(raw: bytes) -> Parsed:
    renamed = _OPAQUE_TYPES.sub(lambda m: m.group(1) + _RENAMED.encode() + m.group(2), raw)
    message = message_from_bytes(renamed, policy=compat32)
    headers = [(name, decode_words(_unfolded(str(value)))) for name, value in message.items()]
    parsed = Parsed(headers=headers, content_type=message.get_content_type())
    notices: list[str] = []
    dsn_texts: list[str] = []
    _walk(message, parsed, notices, dsn_texts)

    if not any(n.strip() for n in notices) and not dsn_texts and not parsed.feedback and \
            not message.get_content_type().startswith("text/"):
        # A multipart whose boundaries do not match its header, say: read it as text.
        notices.append(_unparsed_text(renamed))
    text = tidy("\n".join(notices)).replace(_RENAMED, "message/")
    if not parsed.has_original_part:
        text, original = split_original(text)
        if original:
            parsed.original_text = original
            parsed.original_headers = parse_headers(_skip_to_headers(original))
    if not dsn_texts:
        # DSN fields written into the text itself (no message/delivery-status part).
        embedded = _embedded_dsn(text)
        if embedded:
            dsn_texts.append(embedded)
    for dsn_text in dsn_texts:
        per_message, recipients = parse_dsn_fields(dsn_text)
        for key, value in per_message.items():
            parsed.dsn_message.setdefault(key, value)
        parsed.dsn_recipients.extend(recipients)
    parsed.text = text
    return parsed


def _unparsed_text(raw: bytes) -> str:
    """The body of a message whose MIME structure did not parse (a boundary parameter folded
    without white space, say): its text with part headers and boundary lines left out."""
    body = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    body = body.split("\n\n", 1)[1] if "\n\n" in body else ""
    kept = [line for line in body.split("\n")
            if not line.startswith("--") and not re.match(r"(?i)^(?:content-[\w-]+:|\s*boundary=)", line)]
    return "\n".join(kept)


def _skip_to_headers(text: str) -> str:
    lines = text.split("\n")
    for index, line in enumerate(lines[:40]):
        if _HEADER_LINE.match(line) and _looks_like_headers("\n".join(lines[index:])):
            return "\n".join(lines[index:])
    return text


def _embedded_dsn(text: str) -> str:
    lines = text.split("\n")
    for index, line in enumerate(lines):
        m = _DSN_LINE.match(line)
        if m and m.group(1).lower() in ("final-recipient", "original-recipient", "reporting-mta"):
            start = index
            while start > 0 and lines[start - 1].strip() and _DSN_LINE.match(lines[start - 1]):
                start -= 1
            return "\n".join(lines[start:])
    return ""


def _content_type(part: Message) -> str:
    """The part's type; one folded without its ";" ("text/plain\\n charset=...") read as its first word."""
    m = re.match(r"\s*([\w.+\-]+/[\w.+\-]+)", part.get_content_type())
    return m.group(1).lower() if m else "text/plain"


def _walk(part: Message, parsed: Parsed, notices: list[str], dsn_texts: list[str]) -> None:
    ctype = _content_type(part)
    if part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                _walk(child, parsed, notices, dsn_texts)
        return
    if ctype.startswith(_RENAMED):
        kind = ctype[len(_RENAMED):]
        body = tidy(_part_text(part))
        if kind in ("delivery-status", "global-delivery-status"):
            dsn_texts.append(body)
        elif kind == "feedback-report":
            parsed.feedback = _feedback_fields(body)
        elif not parsed.has_original_part:
            parsed.has_original_part = True
            parsed.original_text = body
            parsed.original_headers = parse_headers(_skip_to_headers(body))
            if kind in ("rfc822", "global") and not parsed.inner:
                inner = _inner_bounce(body)
                if inner is not None:
                    parsed.inner = inner
        return
    if parsed.has_original_part:
        return  # the returned message's own text, not the notice
    if ctype == "text/plain" or (ctype == "text/html" and not notices) or ctype == "text/enriched":
        body = _part_text(part)
        notices.append(html_to_text(body) if ctype == "text/html" else body)
    elif ctype == "text/rfc822-headers":
        parsed.has_original_part = True
        parsed.original_text = tidy(_part_text(part))
        parsed.original_headers = parse_headers(parsed.original_text)


def _inner_bounce(body: str) -> Parsed | None:
    """A returned message that is itself a DSN: some gateways wrap the real report."""
    if not re.search(r"(?im)^content-type:\s*(?:multipart/report|message/delivery-status)", body):
        return None
    return parse_message(body.encode("utf-8", "surrogateescape"))


def _feedback_fields(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in parse_headers(text):
        fields.setdefault(name.lower(), []).append(value)
    return fields
