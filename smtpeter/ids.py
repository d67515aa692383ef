"""Message and object identifiers: opaque, URL-safe, unique, roughly time-ordered."""

from __future__ import annotations

import base64
import random
import re
import secrets
import string
import time

# Crockford's base32 in lower case: no i, l, o, u, so ids survive being read aloud.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_random = random.Random(secrets.randbits(128))
_ID = re.compile(f"[{_ALPHABET}]{{18}}")


def new_id() -> str:
    """Return an 18-character id: 48 bits of milliseconds, then 40 random bits.

    Base32 of the big-endian bytes, so ids sort by time as strings.
    """
    # Ids are not secrets (access is checked per account, links are signed), so
    # the fast generator will do; it only has to avoid collisions.
    value = (time.time_ns() // 1_000_000) << 40 | _random.getrandbits(40)
    return base64.b32encode(value.to_bytes(11, "big"))[:18].translate(_TO_CROCKFORD).decode("ascii")


def is_id(text: str) -> bool:
    """Whether ``text`` could be an id that ``new_id`` made (so it is safe to look up)."""
    return _ID.fullmatch(text) is not None


_SECRET_ALPHABET = string.ascii_letters + string.digits


def new_secret(length: int = 32) -> str:
    """A random secret for tokens and passwords: letters and digits only.

    No punctuation, so it never starts with "-" on a command line and needs
    no quoting in URLs, config files or shells.
    """
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(length))
