"""SMTP command syntax (RFC 5321 §4.1, RFC 6531, RFC 3461), without I/O.

Everything here takes bytes from the wire and returns values or raises
``SyntaxProblem`` carrying the reply the server should give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smtpeter import address as address_syntax
from smtpeter.address import AddressError


class SyntaxProblem(Exception):
    """A command could not be parsed; ``code``/``status``/``text`` form the reply."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


# Source routes (A-d-l) must be accepted and ignored (RFC 5321 §4.1.2, §C).
_ROUTE = re.compile(r"@[^:,<>]+(?:,@[^:,<>]+)*:")
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_PARAM_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")


@dataclass
class Path:
    """A reverse- or forward-path with its ESMTP parameters."""

    address: str  # "" for the null reverse-path <>
    params: dict[str, str | None] = field(default_factory=dict)


def split_command(line: bytes) -> tuple[str, bytes]:
    """Return the upper-cased verb and the raw argument bytes."""
    verb, _, args = line.partition(b" ")
    try:
        name = verb.decode("ascii").upper()
    except UnicodeDecodeError:
        name = ""
    return name, args.strip(b" ")


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``KEYWORD[=VALUE]`` parameters (RFC 5321 §4.1.2 Mail-parameters)."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not _PARAM_KEYWORD.fullmatch(keyword) or (eq and not _PARAM_VALUE.fullmatch(value)):
            raise SyntaxProblem(501, "5.5.4", f"Syntax error in parameter {item!r}")
        keyword = keyword.upper()
        if keyword in params:
            raise SyntaxProblem(501, "5.5.4", f"Duplicate parameter {keyword}")
        params[keyword] = value if eq else None
    return params


def parse_path(args: bytes, keyword: str, allow_null: bool) -> Path:
    """Parse ``FROM:<address> params`` (``keyword`` is FROM or TO)."""
    try:
        text = args.decode("utf-8")
    except UnicodeDecodeError:
        raise SyntaxProblem(501, "5.5.2", "Invalid UTF-8 in command") from None
    prefix = keyword + ":"
    if text[: len(prefix)].upper() != prefix:
        command = "MAIL FROM" if keyword == "FROM" else "RCPT TO"
        raise SyntaxProblem(501, "5.5.2", f"Syntax: {command}:<address>")
    text = text[len(prefix):].lstrip(" ")
    if not text.startswith("<"):
        raise SyntaxProblem(501, "5.1.7" if keyword == "FROM" else "5.1.3",
                            "Address must be enclosed in <>")
    end = _closing_bracket(text)
    if end < 0:
        raise SyntaxProblem(501, "5.5.2", "Missing > after address")
    inner, rest = text[1:end], text[end + 1:]
    if rest and not rest.startswith(" "):
        raise SyntaxProblem(501, "5.5.2", "Syntax error after address")
    params = parse_params(rest)
    if inner == "":
        if not allow_null:
            raise SyntaxProblem(501, "5.1.3", "Null recipient address not allowed")
        return Path("", params)
    route = _ROUTE.match(inner)
    if route:
        inner = inner[route.end():]
    return Path(inner, params)


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing the path, skipping quoted local parts."""
    quoted = escaped = False
    for index, char in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


def check_mailbox(address: str, utf8: bool) -> str:
    """A mailbox with its domain lower-cased, or the SyntaxProblem to answer."""
    try:
        return address_syntax.check_mailbox(address, utf8)
    except AddressError as exc:
        if exc.needs_smtputf8:
            raise SyntaxProblem(553, "5.6.7", str(exc)) from None
        raise SyntaxProblem(501, "5.1.3", str(exc)) from None


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext decoding, with the SMTP reply for malformed input."""
    try:
        return address_syntax.xtext_decode(value)
    except ValueError as exc:
        raise SyntaxProblem(501, "5.5.4", str(exc)) from None
