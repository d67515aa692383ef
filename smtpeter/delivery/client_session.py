"""Outbound SMTP wire format, without sockets: replies, EHLO keywords, the DATA writer."""

from __future__ import annotations

import re
from dataclasses import dataclass

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_LINE = re.compile(rb"^([2-5]\d\d)([ -]?)(.*)$", re.S)


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def status(self) -> str | None:
        """The enhanced status code (RFC 3463) of the first line, if it has one."""
        match = _STATUS.match(self.lines[0]) if self.lines else None
        return match.group(0) if match else None

    @property
    def text(self) -> str:
        """All lines joined by spaces, as a diagnostic for events and DSNs."""
        return " ".join(line.strip() for line in self.lines).strip()

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def ok(self) -> bool:
        """Positive completion or intermediate (2xx, 3xx), as for EHLO or DATA's 354."""
        return 200 <= self.code < 400

    @property
    def positive(self) -> bool:
        """Positive completion (2xx): what MAIL, RCPT and the final dot must get."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class ReplyParser:
    """Collects the lines of multi-line replies (``250-...`` up to ``250 ...``)."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def line(self, raw: bytes) -> Reply | None:
        match = _REPLY_LINE.match(raw)
        if not match:
            raise ProtocolError(f"not an SMTP reply: {raw[:80]!r}")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed inside a multi-line reply: {raw[:80]!r}")
        self._code = code
        self._lines.append(match.group(3).decode("utf-8", "replace"))
        if match.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


@dataclass(frozen=True)
class Capabilities:
    """What the server said it supports in its EHLO reply (nothing after HELO)."""

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls: bool = False
    enhanced_status_codes: bool = False

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            keyword, _, value = line.strip().partition(" ")
            keywords[keyword.upper()] = value.strip()
        size = keywords.get("SIZE")
        return cls(
            esmtp=True,
            pipelining="PIPELINING" in keywords,
            size=int(size) if size and size.isdigit() and int(size) > 0 else None,
            eightbitmime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            dsn="DSN" in keywords,
            starttls="STARTTLS" in keywords,
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
        )


def data_payload(message: bytes) -> bytes:
    """The bytes to send after 354: CRLF everywhere, every leading dot doubled, then ``.``.

    Works on the whole message at once, so where a transport would cut it into
    chunks can never matter: a line ``.`` at any offset is stuffed to ``..``
    and cannot end the DATA early. Bare CR and bare LF become CRLF, so no
    ambiguous line ending leaves us (RFC 5321 §2.3.8).
    """
    if b"\r" in message:
        # Normalise every CRLF, then every bare CR and LF left, to CRLF.
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    message = message.replace(b"\n", b"\r\n")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"
