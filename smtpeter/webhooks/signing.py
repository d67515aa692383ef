"""Standard Webhooks signatures (https://www.standardwebhooks.com): each call carries
``webhook-id`` (the call's id, the same on every retry), ``webhook-timestamp`` (Unix seconds of
this attempt) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, under the hook's
secret, of ``id.timestamp.body``; during a secret's rotation one such signature per secret,
separated by spaces, so a receiver holding either verifies.

A secret is ``whsec_`` and the base64 of 24 random bytes; the HMAC key is those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
_SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(secret: str, call_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret_key(secret), f"{call_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(call_id: str, timestamp: int, body: bytes,
                   signing_secrets: Sequence[str]) -> dict[bytes, bytes]:
    """The three headers of a call signed with each of ``signing_secrets`` (the newest first)."""
    signatures = " ".join(signature(secret, call_id, timestamp, body) for secret in signing_secrets)
    return {b"webhook-id": call_id.encode("ascii"), b"webhook-timestamp": str(timestamp).encode("ascii"),
            b"webhook-signature": signatures.encode("ascii")}
