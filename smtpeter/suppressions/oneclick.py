"""One-click unsubscribe links (RFC 8058): ``{base}/unsubscribe/{token}``, one per recipient.

The token is a signed link of kind "unsubscribe" (smtpeter/links.py: keys rotate, tags are compared
in constant time, and the kind is signed, so no click, pixel or web version token opens it). It names
the recipient's public message id; the account and the address come from that recipient's row.
``base`` is the sender domain's tracking host when it has one, as for tracking links, else
``http.public_url``.
"""

from __future__ import annotations

import functools

from smtpeter.links import Link, LinkSigner

PATH = "/unsubscribe/"
KIND = "unsubscribe"


@functools.lru_cache(maxsize=8)
def signer(keys: tuple[bytes, ...]) -> LinkSigner:
    return LinkSigner(keys)


def unsubscribe_url(base: str, link_signer: LinkSigner, recipient_id: str) -> str:
    return f"{base}{PATH}{link_signer.sign(Link(KIND, recipient_id, 0))}"


def verify(link_signer: LinkSigner, token: str) -> str | None:
    """The recipient id an unsubscribe token names, if it is ours and untouched; else None."""
    link = link_signer.verify(token)
    return link.recipient_id if link is not None and link.kind == KIND else None
