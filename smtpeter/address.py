"""Addresses, shared by every stage: mailbox syntax, how domains compare, RFC 3461 xtext.

xtext is the encoding of ENVID and ORCPT in SMTP DSN parameters; Twisted's
own xtext_encode leaves "+" and "=" alone (shared/spec/libraries.md §9).
"""

from __future__ import annotations

import re

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = r"\u0080-\U0010ffff"
_LDH = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_ULDH = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9\-{_UTF8}]{{0,61}}[A-Za-z0-9{_UTF8}])?"
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e"
_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"


def _mailbox_re(utf8: bool) -> re.Pattern[str]:
    atext = _ATEXT + (_UTF8 if utf8 else "")
    qtext = _QTEXT + (_UTF8 if utf8 else "")
    label = _ULDH if utf8 else _LDH
    return re.compile(
        rf"(?P<local>[{atext}]+(?:\.[{atext}]+)*|\"(?:[{qtext}]|\\[\x20-\x7e])*\")"
        rf"@(?P<domain>{label}(?:\.{label})*|\[(?:{_IPV4}|IPv6:[0-9A-Fa-f:.]+)\])"
    )


_MAILBOX = {False: _mailbox_re(False), True: _mailbox_re(True)}


class AddressError(ValueError):
    """Not a mailbox we take; ``needs_smtputf8`` when it only lacks the SMTPUTF8 permission."""

    def __init__(self, message: str, needs_smtputf8: bool = False) -> None:
        super().__init__(message)
        self.needs_smtputf8 = needs_smtputf8


def check_mailbox(address: str, utf8: bool) -> str:
    """Validate a mailbox (RFC 5321 §4.1.2); return it with the domain lower-cased.

    ``utf8`` allows internationalised local parts and domains (SMTPUTF8, RFC 6531).
    """
    if not address.isascii() and not utf8:
        raise AddressError("Non-ASCII address needs the SMTPUTF8 parameter", needs_smtputf8=True)
    match = _MAILBOX[utf8].fullmatch(address)
    if not match:
        raise AddressError(f"Bad address syntax: {address}")
    local, domain = match.group("local"), match.group("domain")
    if len(local.encode("utf-8")) > 64 or len(domain.encode("utf-8")) > 255:
        raise AddressError("Address too long")
    return f"{local}@{domain.lower()}"


def domain_key(domain: str) -> str:
    """A domain as domains are compared: lower case, no final dot, IDNs as A-labels."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (``+XX`` hex escapes); ValueError if malformed."""
    out = bytearray()
    index = 0
    raw = value.encode("ascii", "strict")
    while index < len(raw):
        char = raw[index]
        if char == 0x2B:  # '+'
            hex_digits = raw[index + 1:index + 3]
            if len(hex_digits) != 2 or not re.fullmatch(rb"[0-9A-F]{2}", hex_digits):
                raise ValueError("Invalid xtext encoding")
            out.append(int(hex_digits, 16))
            index += 3
        else:
            if char < 0x21 or char > 0x7E or char == 0x3D:
                raise ValueError("Invalid character in xtext")
            out.append(char)
            index += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("xtext does not decode to UTF-8") from None


def xtext_encode(value: str) -> str:
    """Encode as RFC 3461 xtext: ``+``, ``=``, controls and non-ASCII become ``+XX``."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
