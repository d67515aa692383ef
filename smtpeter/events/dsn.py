"""Delivery status notifications (RFC 3461, 3464, 6522, 6533) sent back to a message's sender.

The report is assembled as raw CRLF bytes rather than through ``email.message``: the
returned original has to stay byte for byte what we accepted, and the structured fields
are built from values that came off the network (remote replies, addresses, ENVID), so
each value is cleaned and folded here where its line structure is under our control.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from smtpeter.address import xtext_encode
from smtpeter.attempt import RecipientResult
from smtpeter.envelope import Envelope, Recipient
from smtpeter.events.model import accept
from smtpeter.ids import new_id
from smtpeter.mime.header import make_field, parse
from smtpeter.storage.models import (
    DELIVERED,
    EXPIRED,
    FAILED,
    QUEUED,
    Lease,
    NewMessage,
    Outcome,
    StoredMessage,
)

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_MAX_LINE = 998  # RFC 5322 §2.1.1, octets without the CRLF
_FOLD_AT = 78  # the line length RFC 5322 asks for where we can choose
_MAX_CHUNK = 900  # an unbreakable run longer than this is split so a field line stays under 998
_MAX_DIAGNOSTIC = 2000  # characters; longer remote replies are cut, the rest is noise
_TEXT_WIDTH = 76
# Anything that some reader could take for a line break, plus the other controls.
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_EMBEDDED = re.compile(r"\\x\{[0-9A-Fa-f]{1,6}\}")  # RFC 6533 EmbeddedUnicodeChar
_NOT_HOST = re.compile(r"[^A-Za-z0-9.:_\-\[\]]")
_NOT_ATOM = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]")
_UNSAFE_LINE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00|[^\r\n]{999}")

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}

_INTRO = {
    "failed": "Your message could not be delivered to the following recipients. The mail system "
    "has given up on them and will not try again:",
    "delayed": "Your message has not yet been delivered to the following recipients. The mail "
    "system is still trying; you do not need to send it again:",
    "delivered": "Your message was delivered to the following recipients:",
    "relayed": "Your message was passed on to the mail systems of the following recipients. Those "
    "systems do not return delivery notifications, so you may get no further notice:",
    "expanded": "Your message was delivered to the following recipients, who forward it to "
    "further addresses:",
}

# RFC 3463 subject.detail codes, for a human reading the notice without a diagnostic.
_STATUS_TEXT = {
    "1.1": "the mailbox does not exist",
    "1.2": "the destination domain does not exist or accepts no mail",
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "3.4": "the message is too big for the destination",
    "4.1": "the destination mail server did not answer",
    "4.2": "the connection to the destination mail server failed",
    "4.4": "the message could not be routed to its destination",
    "4.7": "delivery took too long and the message expired",
    "7.1": "the destination refused the message by policy",
}


def notices(message: StoredMessage, leases: list[Lease], outcomes: list[Outcome],
            results: list[RecipientResult], now: float, reporting_mta: str,
            delay_warning: float) -> list[NewMessage]:
    """The DSN (RFC 3464) these outcomes call for, if any, as a message to queue.

    Only for a real envelope sender (never for the null sender, so DSNs
    cannot loop) and only when bounces are not tracked by us instead; each
    recipient as its NOTIFY asks (FAILURE by default). A recipient that gets
    a delay notice has its outcome's ``delay_notified`` set: one per recipient.
    """
    to = message.envelope.sender
    if not to or message.options.trackbounces:
        return []
    statuses = []
    for lease, outcome, result in zip(leases, outcomes, results, strict=True):
        recipient = lease.recipient
        peer = result.peer
        common = {"final_recipient": lease.address, "original_recipient": recipient.orcpt,
                  "remote_mta": peer.mx if peer else None,
                  "diagnostic": result.description if result.code else None,
                  "last_attempt": now}
        if outcome.state in (FAILED, EXPIRED) and recipient.wants("FAILURE"):
            # RFC 3463 X.4.7: delivery time expired.
            status = "4.4.7" if outcome.state == EXPIRED else (result.status or "5.0.0")
            statuses.append(RecipientStatus(action="failed", status=status, **common))
        elif (outcome.state == DELIVERED and recipient.wants("SUCCESS")
              and not (peer and peer.capabilities.dsn)):
            # The next hop cannot report success itself (RFC 3461 §6.2.3).
            statuses.append(RecipientStatus(action="relayed", status=result.status or "2.0.0", **common))
        elif (outcome.state == QUEUED and recipient.wants("DELAY") and not lease.delay_notified
              and now - message.created >= delay_warning):
            outcome.delay_notified = True
            statuses.append(RecipientStatus(action="delayed", status=result.status or "4.0.0",
                                            will_retry_until=message.expires, **common))
    if not statuses:
        return []
    dsn = build_dsn(original=message.mime, recipients=statuses, reporting_mta=reporting_mta, to=to,
                    ret=message.envelope.ret, envid=message.envelope.envid, arrival=message.created,
                    now=now, message_id=new_id())
    # From the null sender, so a DSN can never cause another (RFC 3461 §6.2).
    return [accept(NewMessage(message.account_id, "dsn",
                              Envelope("", (Recipient(to),), smtputf8=not to.isascii()), dsn))]


@dataclass(frozen=True)
class RecipientStatus:
    """What happened to one recipient, in RFC 3464 per-recipient terms."""

    final_recipient: str  # the address we tried
    action: str  # "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    status: str  # RFC 3463 code, e.g. "5.1.1", "4.4.7"
    original_recipient: str | None = None  # RCPT ORCPT as "addr-type;address", xtext-decoded
    remote_mta: str | None = None  # host name of the MX that answered
    diagnostic: str | None = None  # the remote reply text
    last_attempt: float | None = None  # unix time
    will_retry_until: float | None = None  # unix time, for "delayed"


def build_dsn(
    *,
    original: bytes,
    recipients: list[RecipientStatus],
    reporting_mta: str,
    to: str,
    ret: str | None,
    envid: str | None,
    arrival: float,
    now: float,
    message_id: str,
) -> bytes:
    """The complete DSN message (CRLF bytes) telling ``to`` what happened to ``recipients``.

    ``ret`` is the MAIL FROM RET value: "FULL" returns the whole original, anything else only
    its header (RFC 3461 §4.3). ``envid`` is the decoded ENVID. The report is the RFC 6533
    "global" kind when an address or the original's header is not ASCII, because only that
    kind may carry them unencoded.
    """
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    sender = _one_line(to)
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    if not sender:
        raise ValueError("a DSN is never sent to the null sender (RFC 3461 §6.2)")
    host = _host(reporting_mta)
    local_id = re.sub(r"\.{2,}", ".", _NOT_ATOM.sub("", message_id)).strip(".")
    if not host or not local_id:
        raise ValueError("reporting_mta and message_id must not be empty")
    for recipient in recipients:
        if recipient.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {recipient.action!r}")
        if not _STATUS.fullmatch(recipient.status):
            raise ValueError(f"malformed status code {recipient.status!r}")

    header = _header_block(original)
    addresses = [sender] + [r.final_recipient for r in recipients]
    addresses += [r.original_recipient for r in recipients if r.original_recipient]
    is_global = not header.isascii() or not all(a.isascii() for a in addresses)
    full = (ret or "").upper() == "FULL" and not _UNSAFE_LINE.search(original)

    text = _human_text(recipients, host, is_global, full, (ret or "").upper() == "FULL")
    status = _delivery_status(recipients, host, envid, arrival, is_global)
    returned = original if full else header
    parts = [
        (_text_headers(text), text),
        (_status_headers(status, is_global), status),
        (_returned_headers(returned, is_global, full), returned),
    ]

    boundary = _boundary(content for _, content in parts)
    report_type = "global-delivery-status" if is_global else "delivery-status"
    eight_bit = not all(content.isascii() for _, content in parts)
    outer = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        _field("To", f"<{sender}>"),
        _field("Subject", _subject(recipients)),
        _field("Date", _date(now)),
        _field("Message-ID", f"<{local_id}@{host}>"),
        _field("Auto-Submitted", "auto-replied"),
        _field("MIME-Version", "1.0"),
        _field("Content-Type", f'multipart/report; report-type={report_type}; boundary="{boundary}"'),
    ]
    if eight_bit:
        outer.append(_field("Content-Transfer-Encoding", "8bit"))
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = b"This is a MIME-encapsulated delivery status notification."
    for headers, content in parts:
        body += delimiter + b"\r\n" + b"".join(headers) + b"\r\n" + content
    return b"".join(outer) + b"\r\n" + body + delimiter + b"--\r\n"


# -- the three parts ---------------------------------------------------------------------


def _human_text(
    recipients: list[RecipientStatus], host: str, is_global: bool, full: bool, wanted_full: bool,
) -> bytes:
    """The first part: what happened, per recipient, in words, with the remote replies."""
    lines = [f"This is the mail delivery system at {host}.", ""]
    for action in ACTIONS:
        group = [r for r in recipients if r.action == action]
        if not group:
            continue
        lines += _wrap(_INTRO[action], "", "")
        lines.append("")
        for recipient in group:
            lines += _wrap(f"<{_display(recipient.final_recipient, is_global)}>", "  ", "    ")
            lines += _wrap(f"Status {recipient.status}: {_explain(recipient)}", "    ", "      ")
            if recipient.remote_mta and _host(recipient.remote_mta):
                lines += _wrap(f"Remote server: {_host(recipient.remote_mta)}", "    ", "      ")
            if recipient.diagnostic and _diagnostic(recipient.diagnostic, is_global):
                reply = _diagnostic(recipient.diagnostic, is_global)
                lines += _wrap(f"It said: {reply}", "    ", "      ")
            if action == "delayed" and recipient.will_retry_until is not None:
                lines += _wrap(f"Retrying until: {_date(recipient.will_retry_until)}", "    ", "      ")
            lines.append("")
    if full:
        lines.append("The original message is attached.")
    elif wanted_full:
        lines += _wrap("The original message cannot be returned whole (its lines are not plain "
                       "CRLF text); its header is attached.", "", "")
    else:
        lines.append("The header of the original message is attached.")
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _explain(recipient: RecipientStatus) -> str:
    klass, _, detail = recipient.status.partition(".")
    reason = _STATUS_TEXT.get(detail)
    if recipient.action == "failed" and klass == "4":
        return "delivery kept failing temporarily and the mail system gave up" + (
            f" ({reason})" if reason else "")
    if reason:
        return reason
    return {"2": "success", "4": "temporary failure", "5": "permanent failure"}[klass]


def _delivery_status(
    recipients: list[RecipientStatus], host: str, envid: str | None, arrival: float, is_global: bool,
) -> bytes:
    """The second part: RFC 3464 §2.2 per-message fields, then one block per recipient (§2.3)."""
    block = []
    if envid is not None:
        # xtext turns CR, LF and every other control into +XX, so it cannot break the line.
        block.append(_field("Original-Envelope-Id", xtext_encode(envid)))
    block.append(_field("Reporting-MTA", f"dns; {host}"))
    block.append(_field("Arrival-Date", _date(arrival)))
    blocks = [b"".join(block)]
    for recipient in recipients:
        block = []
        if recipient.original_recipient:
            original = _original_recipient(recipient.original_recipient)
            if original:
                block.append(_field("Original-Recipient", original))
        block.append(_field("Final-Recipient", _typed_address(recipient.final_recipient)))
        block.append(_field("Action", recipient.action))
        block.append(_field("Status", recipient.status))
        if recipient.remote_mta and _host(recipient.remote_mta):
            block.append(_field("Remote-MTA", f"dns; {_host(recipient.remote_mta)}"))
        if recipient.diagnostic and _diagnostic(recipient.diagnostic, is_global):
            block.append(_field("Diagnostic-Code", f"smtp; {_diagnostic(recipient.diagnostic, is_global)}"))
        if recipient.last_attempt is not None:
            block.append(_field("Last-Attempt-Date", _date(recipient.last_attempt)))
        if recipient.action == "delayed" and recipient.will_retry_until is not None:
            block.append(_field("Will-Retry-Until", _date(recipient.will_retry_until)))
        blocks.append(b"".join(block))
    return b"\r\n".join(blocks)


def _header_block(original: bytes) -> bytes:
    """The original's header, CRLF-terminated and within line limits, for a headers-only return.

    ``parse`` finds the fields; a message without a blank line is all header. Bare CR or LF
    become CRLF and an over-long line is cut (at a character boundary), since this copy is
    only for the sender's information and must not break the report.
    """
    header = b"".join(field.raw for field in parse(original).fields)
    lines = re.split(rb"\r\n|\r|\n", header)
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if len(line) > _MAX_LINE:
            cut = _MAX_LINE
            while cut > 0 and 0x80 <= line[cut] < 0xC0:
                cut -= 1
            line = line[:cut]
        out.append(line + b"\r\n")
    return b"".join(out)


def _text_headers(text: bytes) -> list[bytes]:
    charset = "us-ascii" if text.isascii() else "utf-8"
    headers = [_field("Content-Type", f"text/plain; charset={charset}"),
               _field("Content-Description", "Notification")]
    if not text.isascii():
        headers.append(_field("Content-Transfer-Encoding", "8bit"))
    return headers


def _status_headers(status: bytes, is_global: bool) -> list[bytes]:
    kind = "message/global-delivery-status" if is_global else "message/delivery-status"
    headers = [_field("Content-Type", kind), _field("Content-Description", "Delivery report")]
    if not status.isascii():
        headers.append(_field("Content-Transfer-Encoding", "8bit"))
    return headers


def _returned_headers(content: bytes, is_global: bool, full: bool) -> list[bytes]:
    if full:
        kind = "message/global" if is_global else "message/rfc822"
        description = "Undelivered Message"
    else:
        kind = "message/global-headers" if is_global else "text/rfc822-headers"
        description = "Undelivered Message Headers"
    headers = [_field("Content-Type", kind), _field("Content-Description", description)]
    if not content.isascii():
        headers.append(_field("Content-Transfer-Encoding", "8bit"))
    return headers


# -- values ------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """``text`` with every run of line breaks and controls turned into one space, so it stays on its line.

    Lone surrogates (undecodable bytes kept by surrogateescape) become "?" to keep it valid UTF-8.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    return re.sub(" {2,}", " ", _BREAKS.sub(" ", text)).strip()


def _host(name: str) -> str:
    """A host name or address literal as ASCII (IDNA for U-labels), with anything else removed."""
    host = re.sub(r"\s+", "", _one_line(name))
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = host.encode("ascii", "replace").decode("ascii")
    return _NOT_HOST.sub("", host)


def _unitext(address: str, keep_escapes: bool) -> str:
    r"""RFC 6533 utf-8-addr-unitext: UTF-8 as is, but "\", "+", "=", space and controls as \x{HEX}."""
    out = []
    index = 0
    while index < len(address):
        escape = _EMBEDDED.match(address, index) if keep_escapes else None
        if escape:
            out.append(escape.group())
            index = escape.end()
            continue
        char = address[index]
        out.append(f"\\x{{{ord(char):X}}}" if char in "\\+=" or ord(char) <= 0x20 or ord(char) == 0x7F
                   else char)
        index += 1
    return "".join(out)


def _typed_address(address: str) -> str:
    """An address with its RFC 3464 address type: "rfc822" if ASCII, else RFC 6533 "utf-8"."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_unitext(address, keep_escapes=False)}"


def _original_recipient(value: str) -> str:
    """ORCPT as "type;address"; a non-ASCII address of another type is given the utf-8 type."""
    kind, semicolon, address = _one_line(value).partition(";")
    if not semicolon:
        kind, address = "rfc822", kind
    kind, address = re.sub(r"\s+", "", kind) or "rfc822", address.strip()
    if not address:
        return ""
    if kind.lower() == "utf-8":
        return f"{kind};{_unitext(address, keep_escapes=True)}"
    if not address.isascii():
        return f"utf-8;{_unitext(address, keep_escapes=False)}"
    return f"{kind};{address}"


def _display(address: str, is_global: bool) -> str:
    address = _one_line(address)
    return address if is_global else address.encode("ascii", "replace").decode("ascii")


def _diagnostic(text: str, is_global: bool) -> str:
    """A remote reply on one line: ASCII unless the report is global (RFC 6533 §3), and bounded."""
    text = _one_line(text)
    if not is_global:
        text = text.encode("ascii", "replace").decode("ascii")
    if len(text) > _MAX_DIAGNOSTIC:
        text = text[:_MAX_DIAGNOSTIC].rstrip() + " [...]"
    return text


def _date(timestamp: float) -> str:
    """RFC 5322 date-time in local time, like the Date fields ``message.date_now`` writes."""
    return email.utils.format_datetime(datetime.fromtimestamp(timestamp, UTC).astimezone())


def _subject(recipients: list[RecipientStatus]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return _SUBJECTS["failed"]
    if "delayed" in actions:
        return _SUBJECTS["delayed"]
    return _SUBJECTS["success"]


# -- layout ------------------------------------------------------------------------------


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _chunks(word: str) -> list[str]:
    """``word`` cut at character boundaries into pieces of at most _MAX_CHUNK octets."""
    pieces, current = [], ""
    for char in word:
        if _octets(current + char) > _MAX_CHUNK:
            pieces.append(current)
            current = ""
        current += char
    return [*pieces, current]


def _field(name: str, value: str) -> bytes:
    """One header-style field, folded at spaces near 78 octets and never past 998.

    Folding only inserts CRLF before an existing space, so unfolding gives the value back;
    only a run of over 900 octets without a space is split (unfolding then shows a space).
    """
    raw = make_field(name, value)  # refuses CR and LF: the callers' cleaning is not trusted alone
    if len(raw) <= _FOLD_AT + 2:
        return raw
    lines: list[str] = []
    current = f"{name}:"
    started = False
    for word in value.split(" "):
        for piece in (f" {chunk}" for chunk in _chunks(word) if chunk):
            if started and _octets(current) + _octets(piece) > _FOLD_AT:
                lines.append(current)
                current = piece
            else:
                current += piece
            started = True
    lines.append(current)
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _wrap(text: str, indent: str, more: str) -> list[str]:
    return textwrap.wrap(text, _TEXT_WIDTH, initial_indent=indent, subsequent_indent=more,
                         break_long_words=True, break_on_hyphens=False) or [indent.rstrip()]


def _boundary(contents: Iterable[bytes]) -> str:
    """A random boundary (RFC 2046 §5.1.1) checked not to occur in any part.

    It starts with "=_", which quoted-printable and base64 never produce, and carries 128
    random bits, so it cannot be guessed by whoever wrote the original or the remote reply.
    """
    contents = list(contents)
    while True:
        boundary = f"=_dsn_{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in content for content in contents):
            return boundary
