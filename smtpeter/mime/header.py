"""Header-level work on raw RFC 5322 messages, byte for byte.

Ingress and the transforms must touch only the header fields they mean to:
re-serialising a parsed ``email.message`` would rewrap lines and change
bodies. These helpers split the raw bytes into fields and put them back.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# RFC 5322 §3.6.8, plus the obsolete white space before the colon (§4.5) that
# receivers accept: "From : x" must count as a From field here too.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True)
class Field:
    name: str  # lower case
    raw: bytes  # the whole field, continuation lines and final CRLF included

    @property
    def value(self) -> str:
        """The unfolded value with surrounding white space removed."""
        _, _, value = self.raw.partition(b":")
        text = value.decode("utf-8", "surrogateescape")
        return re.sub(r"\r?\n(?=[ \t])", "", text).strip()


@dataclass(frozen=True)
class Parsed:
    fields: list[Field]
    raw: bytes
    body_start: int  # where the header ended: the separating blank line, if any, starts the body

    @property
    def body(self) -> bytes:
        """Everything after the header, the separating blank line included (a copy)."""
        return self.raw[self.body_start:]


def parse(raw: bytes) -> Parsed:
    """Split a CRLF message into header fields and the rest.

    The header ends at the first empty line, or at the first line that is
    neither a field nor a continuation (that line then starts the body).
    """
    fields: list[Field] = []
    name, start = "", -1  # the field being read and where it began
    position, length = 0, len(raw)
    while position < length:
        end = raw.find(b"\n", position)
        end = length if end < 0 else end + 1
        first = raw[position:position + 1]
        if first in (b" ", b"\t") and start >= 0:
            position = end  # a continuation line: the field grows
            continue
        match = _FIELD_NAME.match(raw, position, end)
        if start >= 0:
            fields.append(Field(name, raw[start:position]))
            start = -1
        if not match:
            break
        name, start = match.group(1).decode("ascii").lower(), position
        position = end
    if start >= 0:
        fields.append(Field(name, raw[start:position]))
    return Parsed(fields, raw, position)


def author(raw: bytes) -> str | None:
    """The mailbox a message is from: the Sender when From names several (RFC 5322 §3.6.2),
    else the From's; None when there is no usable one."""
    fields = parse(raw).fields

    def mailboxes(name: str) -> list[str]:
        field = first(fields, name)
        values = [field.value] if field is not None else []
        return [address for _, address in email.utils.getaddresses(values) if "@" in address]

    froms = mailboxes("from")
    if len(froms) > 1:
        return (mailboxes("sender") or froms)[0]
    return froms[0] if froms else None


def build(fields: Iterable[Field], body: bytes | memoryview) -> bytes:
    return b"".join([*(f.raw for f in fields), body])


def remove_fields(raw: bytes, unwanted: Callable[[str], bool]) -> tuple[bytes, list[Field]]:
    """Drop every field whose name ``unwanted`` accepts; return the message and what went."""
    parsed = parse(raw)
    kept, removed = [], []
    for field in parsed.fields:
        (removed if unwanted(field.name) else kept).append(field)
    if not removed:
        return raw, []
    return build(kept, memoryview(raw)[parsed.body_start:]), removed


def first(fields: Iterable[Field], name: str) -> Field | None:
    for field in fields:
        if field.name == name:
            return field
    return None


def make_field(name: str, value: str) -> bytes:
    """A single header field; refuses CR and LF so no caller can inject a header."""
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError(f"illegal character in header {name!r}")
    return f"{name}: {value}\r\n".encode()


_date_cache: tuple[int, str] = (0, "")


def date_now() -> str:
    """The current local time as an RFC 5322 date, formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.format_datetime(email.utils.localtime()))
    return _date_cache[1]
