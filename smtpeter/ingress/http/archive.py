"""Views of an archived message: its header, text and HTML parts, attachments and embeds."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

from smtpeter.mime import header as msg


@dataclass(frozen=True)
class Part:
    rank: int
    name: str
    type: str
    size: int
    content: bytes


def _parse(mime: bytes) -> EmailMessage:
    return email.message_from_bytes(mime, policy=email.policy.default)  # type: ignore[return-value]


def headers(mime: bytes) -> str:
    parsed = msg.parse(mime)
    return b"".join(field.raw for field in parsed.fields).decode("utf-8", "replace")


def body(mime: bytes, subtype: str) -> str | None:
    """The message's text/plain or text/html body (not an attachment), decoded; None if it has none."""
    message = _parse(mime)
    try:
        part = message.get_body(preferencelist=(subtype,))
    except Exception:  # a broken structure has no body we can name
        return None
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    try:
        return part.get_content()
    except (LookupError, UnicodeError):  # an unknown charset
        return part.get_payload(decode=True).decode("utf-8", "replace")


def _leaves(mime: bytes) -> list[EmailMessage]:
    return [p for p in _parse(mime).walk() if not p.is_multipart()]


def attachments(mime: bytes) -> list[Part]:
    """Parts that are attachments (a Content-Disposition of attachment, or a named non-body part)."""
    found = []
    for part in _leaves(mime):
        disposition = part.get_content_disposition()
        if disposition == "attachment" or (disposition is None and part.get_filename()
                                           and not part.get("Content-ID")):
            found.append(part)
    return _numbered(found)


def embeds(mime: bytes) -> list[Part]:
    """Inline parts referenced by Content-ID (images shown in the HTML)."""
    return _numbered([p for p in _leaves(mime) if p.get("Content-ID") and
                      p.get_content_disposition() != "attachment"])


def _numbered(parts: list[EmailMessage]) -> list[Part]:
    result = []
    for rank, part in enumerate(parts):
        content = part.get_payload(decode=True) or b""
        name = part.get_filename() or (part.get("Content-ID") or "").strip("<>") or f"part{rank}"
        result.append(Part(rank, name, part.get_content_type(), len(content), content))
    return result


def pick(parts: list[Part], item: str) -> Part | None:
    """A part by its rank (from 0) or its name."""
    if item.isdigit() and int(item) < len(parts):
        return parts[int(item)]
    return next((p for p in parts if p.name == item), None)
