"""A byte-preserving MIME tree: ``serialize(parse(raw)) == raw`` for any bytes.

A transform that must change one part (re-encode a body, rewrite a header
field) parses the message, edits that part and serializes: every other byte,
preambles, epilogues, delimiter padding and odd line endings included, comes
back exactly as it was. A multipart body is modelled after RFC 2046 §5.1.1::

    preamble + child.delimiter + <child> + ... + child.delimiter + <child> + close + epilogue

A delimiter is the line break before it (the last line break of a part
belongs to the delimiter, not to the part), ``--boundary``, transport padding
and the line break ending the delimiter line. ``close`` is the line break
before it, ``--boundary--`` and its padding; the epilogue starts with the
line break after it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import dataclasses
import re
import urllib.parse
from collections.abc import Iterator

from smtpeter.mime import header
from smtpeter.mime.header import Field

# Deeper multiparts stay leaves, so hostile nesting cannot exhaust the stack.
MAX_DEPTH = 40

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# Quoted strings (possibly unterminated), parentheses, semicolons and the rest.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"?|[();]|\\.?|[^"();\\]+', re.S)
_EXTENDED = re.compile(r"([^*]+)\*(?:(\d+)(\*)?)?")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# Quoted-printable: CRLF stays a line break, everything but printable ASCII (and "=") is escaped;
# so is white space at the end of a line.
_QP_UNSAFE = re.compile(rb"\r\n|[^\t\x20-\x3c\x3e-\x7e]")
_QP_TRAILING_SPACE = re.compile(rb"[ \t](?=\r\n|\Z)")
_QP_ESCAPES = {bytes([octet]): b"=%02X" % octet for octet in range(256)} | {b"\r\n": b"\r\n"}


@dataclasses.dataclass
class Part:
    fields: list[Field] = dataclasses.field(default_factory=list)  # byte-exact header fields
    separator: bytes = b"\r\n"  # the empty line ending the header, b"" if there is none
    body: bytes = b""  # leaf: the raw body; parsed multipart: unused (b"")
    boundary: bytes | None = None  # set when this is a parsed multipart
    preamble: bytes = b""
    epilogue: bytes = b""
    children: list[Part] = dataclasses.field(default_factory=list)
    # The delimiter line introducing this part in its parent; None writes the usual one.
    delimiter: bytes | None = None
    # Multipart: the close delimiter (b"" if the message lacked it); None writes the usual one.
    close: bytes | None = None
    default_type: str = "text/plain"  # message/rfc822 for the children of a multipart/digest

    def header(self, name: str) -> Field | None:
        return header.first(self.fields, name.lower())

    @property
    def content_type(self) -> str:
        """Lower-case ``type/subtype``; RFC 2045 §5.2 defaults for a missing or invalid field."""
        found = self.header("content-type")
        if found is None:
            return self.default_type
        return _parse_content_type(found.value)[0] or "text/plain"

    @property
    def params(self) -> dict[str, str]:
        """Content-Type parameters, lower-case names, quotes and RFC 2231 encoding undone."""
        found = self.header("content-type")
        return {} if found is None else _parse_content_type(found.value)[1]

    @property
    def transfer_encoding(self) -> str:
        found = self.header("content-transfer-encoding")
        words = _segments(found.value)[0].split() if found is not None else []
        return words[0].lower() if words else "7bit"

    @property
    def is_multipart(self) -> bool:
        return self.boundary is not None

    def walk(self) -> Iterator[Part]:
        """This part, then every part below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def decoded(self) -> bytes:
        """The body without its base64 or quoted-printable transfer encoding."""
        if self.is_multipart:
            return serialize(self)[len(serialize_header(self)):]
        encoding = self.transfer_encoding
        if encoding == "base64":
            return decode_base64(self.body)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(self.body)
        return self.body

    def set_body(self, decoded: bytes, encoding: str) -> None:
        """Encode ``decoded`` for the body and say so in Content-Transfer-Encoding."""
        encoding = encoding.lower()
        if encoding == "base64":
            self.body = encode_base64(decoded)
        elif encoding == "quoted-printable":
            self.body = encode_quoted_printable(decoded)
        elif encoding in ("7bit", "8bit", "binary"):
            self.body = decoded
        else:
            raise ValueError(f"unknown transfer encoding {encoding!r}")
        self.set_field("Content-Transfer-Encoding", encoding)
        self.boundary, self.children, self.preamble, self.epilogue, self.close = None, [], b"", b"", None

    def set_field(self, name: str, value: str) -> None:
        """Replace the first field called ``name`` (dropping repeats of it), or append one."""
        new = Field(name.lower(), header.make_field(name, value))
        kept: list[Field] = []
        replaced = False
        for existing in self.fields:
            if existing.name != new.name:
                kept.append(existing)
            elif not replaced:
                kept.append(new)
                replaced = True
        if not replaced:
            if kept and not kept[-1].raw.endswith(b"\n"):
                kept[-1] = Field(kept[-1].name, kept[-1].raw + b"\r\n")
            kept.append(new)
        self.fields = kept
        if not self.separator:
            # Without the empty line the new body would be read as more header.
            self.separator = b"\r\n"


def disposition(part: Part) -> tuple[str, dict[str, str]]:
    """Content-Disposition: its type in lower case ("" without one) and its parameters (as ``params``)."""
    found = part.header("content-disposition")
    if found is None:
        return "", {}
    return _segments(found.value)[0].strip().lower(), _parse_content_type(found.value)[1]


def parse(raw: bytes) -> Part:
    """The MIME tree of ``raw``; never raises, whatever the bytes."""
    return _parse(raw, "text/plain", 0)


def serialize(part: Part) -> bytes:
    out: list[bytes] = []
    _serialize(part, out)
    return b"".join(out)


def serialize_header(part: Part) -> bytes:
    return b"".join(f.raw for f in part.fields) + part.separator


def encode_base64(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending in CRLF."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def decode_base64(data: bytes) -> bytes:
    """Lenient base64: characters outside the alphabet are skipped, bad padding repaired."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        clean = _NOT_BASE64.sub(b"", data)
        clean = clean[: len(clean) - 1] if len(clean) % 4 == 1 else clean
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def encode_quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable with CRLF line breaks and lines of at most 76 characters.

    Each CRLF of ``data`` becomes a hard line break; a lone CR or LF is encoded
    (=0D, =0A) so decoding gives back exactly ``data``. (binascii.b2a_qp is not
    used: it lets some lines grow to 77 characters.)
    """
    encoded = _QP_UNSAFE.sub(_qp_escape, data)
    encoded = _QP_TRAILING_SPACE.sub(_qp_escape, encoded)
    lines = encoded.split(b"\r\n")
    for index, line in enumerate(lines):
        if len(line) > 76:
            pieces, position = [], 0
            while len(line) - position > 76:
                cut = position + 75  # 75 characters and the "=" of the soft line break
                if line[cut - 1] == 0x3D:  # never split an =XX escape
                    cut -= 1
                elif line[cut - 2] == 0x3D:
                    cut -= 2
                pieces.append(line[position:cut] + b"=")
                position = cut
            pieces.append(line[position:])
            lines[index] = b"\r\n".join(pieces)
    return b"\r\n".join(lines)


def _qp_escape(match: re.Match[bytes]) -> bytes:
    return _QP_ESCAPES[match.group()]


def _parse(raw: bytes, default_type: str, depth: int) -> Part:
    head = header.parse(raw)
    rest = head.body
    separator = b"\r\n" if rest.startswith(b"\r\n") else b"\n" if rest.startswith(b"\n") else b""
    part = Part(head.fields, separator, rest[len(separator):], default_type=default_type)
    if depth < MAX_DEPTH and part.content_type.startswith("multipart/"):
        boundary = part.params.get("boundary", "").rstrip()
        if boundary:
            _split_multipart(part, boundary.encode("utf-8", "surrogateescape"), depth)
    return part


def _split_multipart(part: Part, boundary: bytes, depth: int) -> None:
    body, dash = part.body, b"--" + boundary
    first = _find_delimiter(body, dash, 0)
    if first is None or first[2]:
        return  # no part ever starts: it stays a leaf
    pieces: list[tuple[bytes, bytes]] = []
    close, epilogue = b"", b""
    start, end = first[0], first[1]
    while True:
        following = _find_delimiter(body, dash, end)
        if following is None:
            pieces.append((body[start:end], body[end:]))
            break
        pieces.append((body[start:end], body[end:following[0]]))
        if following[2]:
            close, epilogue = body[following[0]:following[1]], body[following[1]:]
            break
        start, end = following[0], following[1]
    child_type = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    children = []
    for delimiter, raw in pieces:
        child = _parse(raw, child_type, depth + 1)
        child.delimiter = delimiter
        children.append(child)
    part.body, part.boundary, part.children = b"", boundary, children
    part.preamble, part.close, part.epilogue = body[: first[0]], close, epilogue


def _find_delimiter(body: bytes, dash: bytes, floor: int) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after ``floor``: (start, end, is_close).

    ``start`` includes the line break before ``--boundary`` (never reaching
    below ``floor``); ``end`` is past the line break ending a delimiter, or
    past the padding of a close delimiter.
    """
    length, position = len(body), floor
    while True:
        found = body.find(dash, position)
        if found < 0:
            return None
        position = found + 1
        if found and body[found - 1] != 0x0A:
            continue  # not at the start of a line
        end = found + len(dash)
        is_close = body.startswith(b"--", end)
        if is_close:
            end += 2
        while end < length and body[end] in (0x20, 0x09):
            end += 1
        if end == length or (is_close and body.startswith((b"\r\n", b"\n"), end)):
            pass  # the line break after a close delimiter begins the epilogue
        elif body.startswith(b"\r\n", end):
            end += 2
        elif body[end] == 0x0A:
            end += 1
        else:
            continue  # "--boundary" followed by more text: an ordinary line
        if found >= 2 and body[found - 2:found] == b"\r\n":
            start = found - 2
        else:
            start = max(found - 1, 0)
        return max(start, floor), end, is_close


def _serialize(part: Part, out: list[bytes]) -> None:
    out.extend(f.raw for f in part.fields)
    out.append(part.separator)
    if part.boundary is None:
        out.append(part.body)
        return
    out.append(part.preamble)
    for index, child in enumerate(part.children):
        if child.delimiter is not None:
            out.append(child.delimiter)
        else:
            before = b"" if index == 0 and not part.preamble else b"\r\n"
            out.append(before + b"--" + part.boundary + b"\r\n")
        _serialize(child, out)
    out.append(b"\r\n--" + part.boundary + b"--" if part.close is None else part.close)
    out.append(part.epilogue)


def _segments(value: str) -> list[str]:
    """``value`` split at the semicolons outside quoted strings, comments turned into spaces."""
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    for match in _PIECE.finditer(value):
        piece = match.group()
        if depth:
            depth += 1 if piece == "(" else -1 if piece == ")" else 0
        elif piece == "(":
            depth = 1
            current.append(" ")
        elif piece == ";":
            segments.append("".join(current))
            current = []
        else:
            current.append(piece)
    segments.append("".join(current))
    return segments


def _unquote(value: str) -> str:
    if value.startswith('"'):
        inner = re.match(r'"((?:[^"\\]|\\.)*)', value, re.S)
        return re.sub(r"\\(.)", r"\1", inner.group(1) if inner else "", flags=re.S)
    words = value.split()
    return words[0] if words else ""


def _parse_content_type(value: str) -> tuple[str | None, dict[str, str]]:
    segments = _segments(value)
    maintype, slash, subtype = segments[0].strip().partition("/")
    maintype, subtype = maintype.strip().lower(), subtype.strip().lower()
    valid = slash and _TOKEN.fullmatch(maintype) and _TOKEN.fullmatch(subtype)
    params: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[bool, str]]] = {}
    for segment in segments[1:]:
        name, equals, raw_value = segment.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            continue
        extended = _EXTENDED.fullmatch(name)
        if extended:  # RFC 2231: name*, name*0, name*0*, ...
            number = int(extended.group(2)) if extended.group(2) else 0
            is_encoded = extended.group(2) is None or extended.group(3) is not None
            section = (is_encoded, _unquote(raw_value.strip()))
            sections.setdefault(extended.group(1), {}).setdefault(number, section)
        else:
            params.setdefault(name, _unquote(raw_value.strip()))
    for name, parts in sections.items():
        params[name] = _join_rfc2231(parts)
    return (f"{maintype}/{subtype}" if valid else None), params


def _join_rfc2231(parts: dict[int, tuple[bool, str]]) -> str:
    charset, data = "us-ascii", b""
    for number in sorted(parts):
        is_encoded, text = parts[number]
        if is_encoded:
            if number == 0 and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)
            data += urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
        else:
            data += text.encode("utf-8", "surrogateescape")
    try:
        # Only text encodings: "base64" or "rot13" as a charset would not decode to text.
        if not codecs.lookup(charset or "us-ascii")._is_text_encoding:
            charset = "utf-8"
        return data.decode(charset or "us-ascii", "replace")
    except (LookupError, UnicodeError, ValueError):
        return data.decode("utf-8", "replace")
