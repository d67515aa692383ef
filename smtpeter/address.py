"""RFC 3461 xtext, the encoding of ENVID and ORCPT in SMTP DSN parameters.

Twisted's own xtext_encode leaves "+" and "=" alone (shared/spec/libraries.md §9).
"""

from __future__ import annotations

import re


def decode(value: str) -> str:
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


def encode(value: str) -> str:
    """Encode as RFC 3461 xtext: ``+``, ``=``, controls and non-ASCII become ``+XX``."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
