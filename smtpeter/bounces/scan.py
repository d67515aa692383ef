"""Recipients and their errors in the text of a notice, whatever MTA wrote it.

Most MTAs that do not send an RFC 3464 report still write the same thing: a
recipient address on a line of its own (or leading one) and the remote
server's reply under it, or a Sendmail-style session transcript. ``scan_text``
and ``scan_transcript`` read those general shapes; ``fallback_findings`` finds
someone to report on when neither does. Formats of their own are formats.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smtpeter.bounces.parse import Parsed

ADDRESS = (r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
           r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")
_ADDRESS = re.compile(ADDRESS)
# A line that names a recipient: "<a@b>:", "a@b", "  a@b (generated from c@d)", "<a@b>... User unknown",
# "<a@b>: host mx said: 550 ...", "RCPT To:<a@b>" is the transcript's, not this.
_RECIPIENT_LINE = re.compile(
    r"^\s*(?:[*\-]\s+)?(?:(?:recipient|to|address|e-?mail|unknown user|user"
    r"|destinataire|failed recipient|invalid recipient)s?\s*(?:address)?\s*[:=]\s*)?"
    r"(?:rfc822;\s*)?[\"']?<?(?P<address>" + ADDRESS + r")>?[\"']?"
    r"(?P<rest>(?:\s*\((?:generated|expanded) from [^)]*\))?\s*(?::|\.\.\.|,|;|\s-\s|$).*)$",
    re.I,
)
_CODE = re.compile(r"(?<![\w.])(?:[245]\.\d{1,3}\.\d{1,3}|[245]\d\d)(?![\w.]?\d)")
_ORIGINAL_START = re.compile(r"^\s*(?:-{3,}|={3,}|\*{3,}).*(?:original|copy|headers|below|follows)", re.I)
_NOISE_LOCALPARTS = re.compile(r"^(?:mailer-daemon|postmaster|root|abuse|noreply|no-reply|nobody|bounces?)$",
                               re.I)


@dataclass
class Finding:
    """One recipient as a format's parser read it; empty strings for what it did not say."""

    recipient: str
    diagnostic: str = ""
    status: str = ""
    replycode: str = ""
    command: str = ""
    action: str = ""
    spec: str = ""
    hint: str = ""
    rhost: str = ""
    feedbacktype: str = ""
    context: str = ""               # more text that may explain the reason (not shown)
    extra: dict[str, str] = field(default_factory=dict)


def has_code(text: str) -> bool:
    return bool(_CODE.search(text))


def addresses_in(text: str) -> list[str]:
    return [m.group(0) for m in _ADDRESS.finditer(text or "")]


def first_address(text: str) -> str:
    m = _ADDRESS.search(text or "")
    return m.group(0) if m else ""


def sweep(text: str) -> str:
    """One line of text: runs of white space made one space, boilerplate edges trimmed."""
    return " ".join((text or "").split()).strip(" -")


def scan_text(text: str, exclude: set[str]) -> list[Finding]:
    """Recipients named at the start of a line, each with the text that follows it."""
    lines = text.split("\n")
    hits: list[tuple[int, str, str]] = []
    block_indent = -1  # indentation of the line that started the current block
    for index, line in enumerate(lines):
        if not line.strip():
            block_indent = -1
            continue
        indent = len(line) - len(line.lstrip())
        if len(line) > 400 or re.match(r"^\s*(?:>>>|<<<|from|sender|reply-to|return-path|message-id|"
                                        r"received|date|subject|cc|mail from|envelope-from)\b", line, re.I):
            continue
        m = _RECIPIENT_LINE.match(line)
        if not m:
            if block_indent < 0:
                block_indent = indent
            continue
        if 0 <= block_indent < indent:
            continue  # a deeper-indented line of the block above ("    <a@b>... User unknown")
        address = m.group("address")
        local = address.split("@")[0]
        if address.lower() in exclude or _NOISE_LOCALPARTS.match(local):
            continue
        block_indent = indent
        hits.append((index, address, m.group("rest")))
    findings: list[Finding] = []
    seen: set[str] = set()
    for number, (index, address, rest) in enumerate(hits):
        end = hits[number + 1][0] if number + 1 < len(hits) else len(lines)
        block: list[str] = [re.sub(r"^\s*(?:\((?:generated|expanded) from [^)]*\))?\s*(?::|\.\.\.|,|;|-)?",
                                   "",
                                   rest).strip()]
        paragraphs = 0
        for line in lines[index + 1:end]:
            if not line.strip():
                if any(part.strip() for part in block):
                    paragraphs += 1
                    # Stop at the paragraph's end once it has a code; Gmail-like notices put
                    # the server's reply a paragraph or two further down.
                    if has_code(" ".join(block)) or paragraphs >= 3 or number + 1 < len(hits):
                        break
                continue
            if _ORIGINAL_START.match(line):
                break
            block.append(line.strip())
        diagnostic = sweep(" ".join(block))
        wrapped = re.fullmatch(r"\(reason: (.*)\)", diagnostic)  # Sendmail's "(reason: 550 5.1.1 ...)"
        if wrapped:
            diagnostic = wrapped.group(1)
        if address.lower() in seen:
            # Named twice (a list, then the details): keep the details.
            for finding in findings:
                if finding.recipient.lower() == address.lower() and not finding.diagnostic:
                    finding.diagnostic = diagnostic
            continue
        seen.add(address.lower())
        findings.append(Finding(recipient=address, diagnostic=diagnostic))
    return findings


def fallback_findings(parsed: Parsed, senders: set[str]) -> list[Finding]:
    """Last resort: an address in a sentence of the notice, or the returned message's recipient."""
    text = parsed.text
    for m in re.finditer(r"(?:to|for|recipient|address)\s*:?\s*<?(" + ADDRESS + r")>?", text, re.I):
        address = m.group(1)
        if address.lower() not in senders and not _NOISE_LOCALPARTS.match(address.split("@")[0]):
            return [Finding(recipient=address, diagnostic=sweep(text))]
    failed = addresses_in(parsed.header("x-failed-recipients"))
    if failed:
        return [Finding(recipient=address, diagnostic=sweep(text)) for address in failed]
    for name in ("x-original-to", "delivered-to", "to", "envelope-to"):
        for address in addresses_in(parsed.original(name)):
            if address.lower() not in senders:
                return [Finding(recipient=address, diagnostic=sweep(text))]
    if re.search(r"\b[245]\d\d\b|error|fail|undeliver|not delivered|rejected", text, re.I):
        # A failure notice that names nobody: one result for an unknown recipient
        # (the receiver knows it from the VERP address the notice came to).
        return [Finding(recipient="", diagnostic=sweep(text))]
    return []




_TRANSCRIPT_RECIPIENT = re.compile(
    r"^(?:(?P<code>[245]\d\d)[ \-])?<(?P<address>" + ADDRESS + r")>\.\.\.\s*(?P<text>.*)$")
_TRANSCRIPT_RCPT = re.compile(r"^>>> ?RCPT TO: ?<?(?P<address>" + ADDRESS + r")>?", re.I)


def scan_transcript(text: str, exclude: set[str]) -> tuple[list[Finding], str]:
    """Recipients in a Sendmail-style session transcript.

        ... while talking to mx.example.org.:
        >>> RCPT To:<kijitora@example.org>
        <<< 550 5.1.1 <kijitora@example.org>... User unknown
        550 5.1.1 <kijitora@example.org>... User unknown

    The server's replies ("<<<") before a recipient's own line belong to it, and
    the command (">>>") they answered is the command that failed.
    """
    findings: dict[str, Finding] = {}
    order: list[str] = []
    loose: list[str] = []  # "554 5.3.0 unknown mailer error 255": an error that names no recipient
    command = ""
    replies: list[str] = []
    last: Finding | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">>>"):
            command = _first_command(line[3:])
            replies = []
            m = _TRANSCRIPT_RCPT.match(line)
            if m and m.group("address").lower() not in exclude:
                last = _transcript_finding(findings, order, m.group("address"), command)
            continue
        if line.startswith("<<<"):
            replies.append(line[3:].strip())
            if last is not None and command == "RCPT":
                last.diagnostic = sweep(f"{last.diagnostic} {line[3:]}")
                replies = []
            continue
        m = _TRANSCRIPT_RECIPIENT.match(line)
        if not m and re.match(r"^[245]\d\d[ \-][245]\.\d{1,3}\.\d{1,3}\s", line):
            loose.append(line)
        if not m or m.group("address").lower() in exclude:
            continue
        finding = _transcript_finding(findings, order, m.group("address"), command)
        if replies:
            finding.diagnostic = sweep(f"{finding.diagnostic} {' '.join(replies)}")
            replies = []
        finding.diagnostic = sweep(f"{finding.diagnostic} {line}")
        last = finding
    return [findings[address] for address in order], sweep(" ".join(loose))


def server_replies(text: str) -> str:
    """Every reply ("<<< ...") a Sendmail-style transcript quotes, in one line."""
    return sweep(" ".join(line.strip()[3:] for line in text.split("\n") if line.strip().startswith("<<<")))


def _transcript_finding(findings: dict[str, Finding], order: list[str], address: str,
                        command: str) -> Finding:
    key = address.lower()
    if key not in findings:
        findings[key] = Finding(recipient=address, command=command)
        order.append(key)
    elif not findings[key].command:
        findings[key].command = command
    return findings[key]


def _first_command(text: str) -> str:
    m = re.match(r"\s*(HELO|EHLO|STARTTLS|AUTH|MAIL|RCPT|DATA|QUIT|RSET)\b", text, re.I)
    if not m:
        return ""
    return m.group(1).upper()


def has_transcript(text: str) -> bool:
    return bool(re.search(r"(?m)^\s*(?:>>> ?[A-Za-z]{4}|<<< ?[245]\d\d|[245]\d\d <[^>\s]+@[^>\s]+>\.\.\.)",
                          text))
