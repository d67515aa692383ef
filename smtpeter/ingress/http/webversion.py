"""The web version: ``{$webversion}``'s URL shows a recipient's message in a browser.

The URL names the recipient (its public message id, signed, kind
"webversion"); the page is the HTML part of that recipient's stored message
(its text part, escaped, when it has none), read off the hot path and parsed
off the reactor. Embedded images (``cid:``) point to their hosted URLs.

It is the sender's HTML on our origin, so it is sandboxed as archive
downloads are (``nosniff``, a CSP ``sandbox`` without scripts, forms or
plugins): it may show images, styles and fonts from anywhere, as the mail
itself does, and its links open, but nothing in it runs. No referrer leaves
with those loads, so the page's URL (which opens it) stays with the reader.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from smtpeter import hosting
from smtpeter.ingress.http import archive
from smtpeter.ingress.http.routing import text
from smtpeter.mime import tree
from smtpeter.storage import NotFound
from smtpeter.storage.models import StoredMessage

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

CSP = (b"default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline' http: https:; "
       b"font-src http: https: data:; form-action 'none'; frame-ancestors 'none'; "
       b"sandbox allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation")


async def page(api: API, request: Any, token: str) -> bytes:
    link = hosting.verify_webversion(api.hosting.signer, token)
    if link is None:
        raise NotFound()
    stored = await api.storage.message_content(link.recipient_id)
    shown = await api.in_thread(render, stored, api.hosting.hosted_url)
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"private, no-store")
    request.setHeader(b"x-robots-tag", b"noindex")
    return text(request, shown, b"text/html; charset=utf-8")


def render(stored: StoredMessage, hosted_url: Any) -> str:
    """The page for a stored message: its HTML with embedded images at their hosted URLs, or its text."""
    shown = archive.body(stored.mime, "html")
    if shown is None:
        plain = archive.body(stored.mime, "plain") or ""
        return ('<!DOCTYPE html><meta charset="utf-8"><pre style="white-space: pre-wrap">'
                f"{html.escape(plain)}</pre>")
    images = hosting.embedded_images(tree.parse(stored.mime))
    if not images:
        return shown
    urls: dict[str, str] = {}
    for image in images:
        urls.setdefault(hosting.cid_key(image.content_id), hosted_url(stored.id, image))
    rewritten, _ = hosting.replace_cids(shown.encode("utf-8", "surrogateescape"), urls)
    return rewritten.decode("utf-8", "surrogateescape")
