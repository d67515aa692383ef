"""VERP return paths: the envelope sender that names the recipient a bounce is about.

With ``trackbounces``, each recipient's copy goes out with the envelope sender
``b-<recipient id>-<key><tag>@<bounce domain>``: the recipient's public message
id as it is (Crockford base32, lower case), a key id and an HMAC-SHA256 tag
over the id. A bounce to that address names its recipient without a database
read, and a forged one (an id with a made-up tag) is recognised.

Receiving MTAs may change the case of a local part (some upper-case it, RFC
5321 §2.4 lets the receiving domain decide), so the token is lower case only
and ``verify`` reads it case-insensitively; nothing in it is case-sensitive.

Keys rotate as the tracking links' do: the first signs, every key verifies,
and a key id (one base32 character) says which to try. The keys are derived
from the link keys (``tracking.keys``) with a domain-separating HMAC, so a
return path tag is never a valid tag of a tracking link, nor the other way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from smtpeter.ids import is_id

PREFIX = "b-"
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford, as message ids
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_TAG_BYTES = 10  # 80 bits: 16 base32 characters, no padding
_TAG_CHARS = _TAG_BYTES * 8 // 5
_ID_CHARS = 18
LOCAL_PART_CHARS = len(PREFIX) + _ID_CHARS + 1 + 1 + _TAG_CHARS  # 38, well under RFC 5321's 64
_DERIVE = b"smtpeter verp return path v1"


def verp_key(link_key: bytes) -> bytes:
    """The return path key derived from a tracking link key."""
    return hmac.new(link_key, _DERIVE, hashlib.sha256).digest()


class VerpSigner:
    """Makes and checks VERP addresses; ``keys`` are the tracking link keys, the first signs."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed to sign return paths")
        derived = [verp_key(key) for key in keys]
        self._signing = derived[0]
        self._signing_id = _key_id(derived[0])
        self._keys: dict[str, list[bytes]] = {}
        for key in derived:
            self._keys.setdefault(_key_id(key), []).append(key)

    def local_part(self, recipient_id: str) -> str:
        """The VERP local part for ``recipient_id`` (a message id, smtpeter.ids)."""
        if not is_id(recipient_id):
            raise ValueError(f"not a message id: {recipient_id!r}")
        return f"{PREFIX}{recipient_id}-{self._signing_id}{_tag(self._signing, recipient_id)}"

    def address(self, recipient_id: str, bounce_domain: str) -> str:
        """The return path ``<token>@<bounce_domain>`` for one recipient's copy."""
        return f"{self.local_part(recipient_id)}@{bounce_domain.lower()}"

    def verify(self, local_part: str) -> str | None:
        """The recipient id a VERP local part names, if one of our keys made it; else None.

        Any case is taken; tags are compared in constant time.
        """
        token = local_part.lower()
        if len(token) != LOCAL_PART_CHARS or not token.startswith(PREFIX):
            return None
        recipient_id, dash, signed = token[len(PREFIX):].partition("-")
        if not dash or not is_id(recipient_id) or len(signed) != 1 + _TAG_CHARS:
            return None
        tag = signed[1:].encode("ascii", "replace")
        for key in self._keys.get(signed[0], ()):
            if hmac.compare_digest(tag, _tag(key, recipient_id).encode("ascii")):
                return recipient_id
        return None


def _key_id(key: bytes) -> str:
    return _ALPHABET[hashlib.sha256(key).digest()[0] % 32]


def _tag(key: bytes, recipient_id: str) -> str:
    digest = hmac.new(key, b"verp\0" + recipient_id.encode("ascii"), hashlib.sha256).digest()[:_TAG_BYTES]
    return base64.b32encode(digest).translate(_TO_CROCKFORD).decode("ascii")
