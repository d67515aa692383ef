"""The one-click unsubscribe URL (RFC 8058) that outbound/unsubscribe.py puts in List-Unsubscribe.

* ``POST`` (a mail client's ``List-Unsubscribe=One-Click``, or the page's button) records the
  recipient's ``unsubscribe`` event, once however often it comes; the suppression rules then put
  the address on its account's list, and webhooks of type ``unsubscribe`` hear of it.
* ``GET`` (and ``HEAD``) shows a small page with a button that POSTs; it changes nothing, so a
  link scanner that follows the URL unsubscribes no one.
* A token that is not ours, or was changed, is a 404 page.

The signed token is the capability: there is no session and no cookie, so no other site can make
a browser unsubscribe someone without the URL itself. The page loads nothing from anywhere, runs
no script, and may only post to itself (its CSP).
"""

from __future__ import annotations

import html
import urllib.parse
from typing import TYPE_CHECKING, Any

from smtpeter.events.model import UNSUBSCRIBE
from smtpeter.ingress.http.routing import DirectResource, handled, text
from smtpeter.storage import NotFound
from smtpeter.storage.models import NewEvent, QueuedRecipient
from smtpeter.suppressions import oneclick

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API

CSP = (b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
       b"base-uri 'none'")
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;color:#222}"
          "button{font-size:1em;padding:.6em 1.2em;cursor:pointer}")


class OneClickPages:
    """Where the unsubscribe URLs are answered: ``{http.public_url path}/unsubscribe/TOKEN`` (and the
    same path on a sender domain's tracking host)."""

    def __init__(self, api: API) -> None:
        self.prefix = urllib.parse.urlsplit(api.config.public_url).path.rstrip("/").encode("utf-8")
        self.resource = DirectResource(api, _answer, (b"GET", b"HEAD", b"POST"))

    def token(self, path: bytes) -> bytes | None:
        """The token of an unsubscribe URL's path; None when the path is not one."""
        if self.prefix and path.startswith(self.prefix + b"/"):
            path = path[len(self.prefix):]
        start = oneclick.PATH.encode()
        return path[len(start):] if path.startswith(start) else None


def _page(request: Any, status: int, title: str, body: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"private, no-store")
    request.setHeader(b"x-robots-tag", b"noindex")
    request.setHeader(b"x-frame-options", b"DENY")
    return text(request, f'<!DOCTYPE html><html lang="en"><meta charset="utf-8">'
                         f'<meta name="viewport" content="width=device-width">'
                         f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
                         f"<h1>{html.escape(title)}</h1>{body}</html>", b"text/html; charset=utf-8")


async def _recipient(api: API, request: Any) -> QueuedRecipient | None:
    token = api.oneclick.token(request.path)
    recipient_id = oneclick.verify(api.links, token.decode("latin-1")) if token else None
    if recipient_id is None:
        return None
    try:
        return await api.storage.recipient(recipient_id)
    except NotFound:  # deleted from the queue since
        return None


@handled
async def _answer(api: API, request: Any) -> bytes:
    recipient = await _recipient(api, request)
    if recipient is None:
        return _page(request, 404, "Not found", "<p>This unsubscribe link is not valid.</p>")
    address = html.escape(recipient.address)
    if request.method == b"POST":
        one_click = request.content.read(len(ONE_CLICK_BODY) + 1).strip() == ONE_CLICK_BODY
        data = {"recipient": recipient.address, "envelope": recipient.envelope or "",
                "method": "one-click" if one_click else "page", "tags": []}
        await api.storage.record_unsubscribe(
            NewEvent(recipient.account_id, recipient.id, recipient.address, UNSUBSCRIBE, data))
        return _page(request, 200, "Unsubscribed", f"<p>{address} gets no more mail from this sender.</p>")
    if await api.storage.events(recipient.id, recipient.account_id, [UNSUBSCRIBE]):
        return _page(request, 200, "Unsubscribed", f"<p>{address} is unsubscribed already.</p>")
    return _page(request, 200, "Unsubscribe", f"<p>Stop mail from this sender to {address}?</p>"
                 '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                 "<button type=\"submit\">Unsubscribe</button></form>")
