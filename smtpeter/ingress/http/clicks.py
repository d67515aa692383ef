"""The redirector and the open pixel on the HTTP listener, and the recorder of hits.

``/c/TOKEN/scheme/host/path?query`` (smtpeter/tracking_urls.py) answers
``302`` to the URL after the token when the token is ours, untouched, names a
click and vouches for exactly that URL (HMAC-SHA256, compared in constant
time); ``/o/TOKEN.gif`` answers a 1x1 transparent GIF for an open token.
Nothing is read from storage to answer: the token carries all of it. Anything
else, a tampered, truncated, re-signed or unknown token, is a ``404`` page:
never a redirect to a URL we did not sign. HEAD is answered as GET is,
without the body. The hit goes to the ``HitLog`` (events/hits.py), which
writes it in a batch, scored for bots, a moment later.

This is the hot path of the HTTP listener: one click per reader and link of
every mailing. ``TrackingChannel`` answers these requests as they arrive on a
connection, before Twisted's request machinery (which costs four times the
rest, see bench/redirect.py), and sends the answer at once rather than on the
reactor's next turn; any other request, or one it does not fully understand
(a body, bare line feeds, a header block over 16 KB), goes to Twisted's
``HTTPChannel``, which keeps that connection from then on. There,
``TrackingResource`` (site.APISite routes /c/ and /o/ to it past Klein, as
/v1/send) answers the same way.

The image proxy records its opens through ``HitRecorder.open`` (``api.hits``).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.resource import Resource

from smtpeter import tracking_urls
from smtpeter.events.bots import HONEYPOT_POSITION
from smtpeter.events.hits import Hit, HitLog
from smtpeter.events.model import CLICK, OPEN
from smtpeter.links import Link, LinkSigner

MAX_HEAD = 16 * 1024  # header bytes the fast path reads; a bigger request goes to Twisted
# A transparent 1x1 GIF.
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NOT_FOUND_PAGE = (b"<!doctype html><meta charset=utf-8><title>Not found</title>"
                  b"<p>This link is not valid. If you copied it, check that you copied all of it.</p>")
HONEYPOT_PAGE = b"<!doctype html><meta charset=utf-8><title>Nothing here</title>"
_NO_STORE = (b"cache-control", b"no-store, private")
_PAGE_HEADERS = [(b"content-type", b"text/html; charset=utf-8"), (b"x-content-type-options", b"nosniff"),
                 (b"content-security-policy", b"default-src 'none'"), _NO_STORE]
_REASONS = {200: b"OK", 302: b"Found", 404: b"Not Found"}

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body (sent for GET only)


class HitRecorder:
    """Hits on verified links, handed to the HitLog. ``open`` is the image proxy's way in."""

    def __init__(self, log: HitLog, clock: Any, public_url: str) -> None:
        self.log = log
        self.clock = clock
        parts = urlsplit(public_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.https = parts.scheme == "https"

    def open(self, request: Any, link: Link, url: str = "") -> None:
        """Record an open: ``link`` (verified) was loaded by ``request``; ``url``: the image's own URL,
        if it was one (the image proxy), else "" (the pixel)."""
        self.add(OPEN, link, url, *_from_request(request))

    def click(self, request: Any, link: Link, destination: str) -> None:
        """Record a click on ``link`` (verified) by ``request``, sent on to ``destination``."""
        self.add(CLICK, link, destination, *_from_request(request))

    def add(self, kind: str, link: Link, destination: str, method: bytes, uri: bytes, head: bytes,
            peer: str, secure: bool) -> None:
        self.log.add(Hit(self.clock.seconds(), kind, link.recipient_id, link.position, method.decode("ascii"),
                         self.origin + uri.decode("latin-1"), destination, peer, head, secure or self.https))


class Redirector:
    """The answers to /c/ and /o/ requests, the same for the fast path and Twisted's."""

    def __init__(self, signer: LinkSigner, hits: HitRecorder, public_url: str) -> None:
        self.signer = signer
        self.hits = hits
        self.prefix = urlsplit(public_url).path.rstrip("/").encode()
        starts = (b"/c/", b"/o/", *((self.prefix + b"/c/", self.prefix + b"/o/") if self.prefix else ()))
        self._starts = tuple(method + b" " + start for method in (b"GET", b"HEAD") for start in starts)

    def ours(self, uri: bytes) -> bool:
        """Whether a request target is the redirector's or the pixel's (a cheap test)."""
        if self.prefix and uri.startswith(self.prefix + b"/"):
            uri = uri[len(self.prefix):]
        return uri.startswith((b"/c/", b"/o/"))

    def may_be_ours(self, data: bytes) -> bool:
        """Whether the start of a request could still be a GET or HEAD of ours."""
        return any(data[:len(start)] == start[:len(data)] for start in self._starts)

    def answer(self, method: bytes, uri: bytes, head: bytes, peer: str, secure: bool) -> Answer:
        """The answer to a GET or HEAD of ``uri`` (one that ``ours``), and the hit recorded."""
        path = uri[len(self.prefix):] if self.prefix and uri.startswith(self.prefix + b"/") else uri
        if path.startswith(b"/c/"):
            parsed = tracking_urls.parse_link(path)
            if parsed is not None and parsed[0] == tracking_urls.CLICK:
                target = parsed[2]
                link = self.signer.verify(parsed[1], target.encode())
                if link is not None and link.kind == CLICK:
                    self.hits.add(CLICK, link, target, method, uri, head, peer, secure)
                    if link.position == HONEYPOT_POSITION:
                        return 200, _PAGE_HEADERS, HONEYPOT_PAGE
                    return 302, [(b"location", target.encode()), _NO_STORE], b""
        else:
            token = tracking_urls.parse_pixel(path)
            link = self.signer.verify(token) if token is not None else None
            if link is not None and link.kind == OPEN:
                self.hits.add(OPEN, link, "", method, uri, head, peer, secure)
                return 200, [(b"content-type", b"image/gif"), _NO_STORE, (b"pragma", b"no-cache")], PIXEL
        return 404, _PAGE_HEADERS, NOT_FOUND_PAGE


class TrackingResource(Resource):
    """/c/ and /o/ through Twisted's request machinery (a connection that made other requests)."""

    isLeaf = True

    def __init__(self, redirector: Redirector) -> None:
        super().__init__()
        self.redirector = redirector

    def render(self, request: Any) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            for name, value in _PAGE_HEADERS:
                request.setHeader(name, value)
            return b"<!doctype html><title>Method not allowed</title>"
        status, headers, body = self.redirector.answer(*_from_request(request))
        request.setResponseCode(status)
        for name, value in headers:
            request.setHeader(name, value)
        return body  # Twisted leaves it out for HEAD and says its length either way


class TrackingChannel(HTTPChannel):
    """An HTTP connection whose redirector and pixel requests are answered as they arrive.

    Only while every request on the connection so far was one of ours: the
    first that is not goes, with everything after it, to Twisted.
    """

    def __init__(self, redirector: Redirector) -> None:
        super().__init__()
        self.redirector = redirector
        self._fast = True
        self._held = b""
        self._peer = ""
        self._secure = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._peer = getattr(self.transport.getPeer(), "host", "")
        self._secure = ISSLTransport.providedBy(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._fast:
            super().dataReceived(data)
            return
        self.resetTimeout()
        if self._held:
            data, self._held = self._held + data, b""
        while data:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) <= MAX_HEAD and self.redirector.may_be_ours(data):
                    self._held = data
                    return
                break
            answered = self._answer(data[:end])
            if answered is None:
                break
            response, close = answered
            send_now(self.transport, response)
            data = data[end + 4:]
            if close:
                self._fast = False  # and nothing more is read: the connection ends
                self.transport.loseConnection()
                return
        else:
            return
        self._fast = False
        super().dataReceived(data)

    def _answer(self, head: bytes) -> tuple[bytes, bool] | None:
        """The bytes answering one request, and whether to close after them; None: not ours to answer."""
        line_end = head.find(b"\r\n")
        request_line, headers = (head, b"") if line_end < 0 else (head[:line_end], head[line_end + 2:])
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or not self.redirector.ours(parts[1]):
            return None
        method, uri, version = parts
        lower = headers.lower()
        if (version not in (b"HTTP/1.1", b"HTTP/1.0") or b"content-length:" in lower
                or b"transfer-encoding:" in lower or lower.count(b"\n") != lower.count(b"\r\n")
                or b"\r\n " in lower or b"\r\n\t" in lower):
            return None  # a body, bare line feeds, folded headers: Twisted reads those
        close = version == b"HTTP/1.0" or _closes(lower)
        status, fields, body = self.redirector.answer(method, uri, headers, self._peer, self._secure)
        out = [b"HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-length: %d\r\n" % (
            status, _REASONS[status], _http_date(), len(body))]
        out += [name + b": " + value + b"\r\n" for name, value in fields]
        out.append(b"connection: close\r\n\r\n" if close else b"\r\n")
        if method == b"GET":
            out.append(body)
        return b"".join(out), close


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` now if the socket takes it, else as Twisted would.

    Twisted's ``write`` only buffers and sends on the reactor's next turn (one
    more epoll change and wake-up per answer): for a small answer on a plain
    TCP connection with nothing waiting before it, sending it here at once
    nearly doubles the redirector's rate. Over TLS, or behind other data, it
    is an ordinary ``write``.
    """
    if (isinstance(transport, tcp.Connection) and transport.connected and not transport.disconnecting
            and not transport.dataBuffer and not getattr(transport, "_tempDataBuffer", True)):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full, or broken: the transport finds out on its own
        data = data[sent:]
        if not data:
            return
    transport.write(data)


def _closes(lower_headers: bytes) -> bool:
    """Whether HTTP/1.1 header lines (lower case) ask to close the connection."""
    start = lower_headers.find(b"connection:")
    while start >= 0:
        if start == 0 or lower_headers[start - 2:start] == b"\r\n":
            end = lower_headers.find(b"\r\n", start)
            value = lower_headers[start + 11:end if end >= 0 else len(lower_headers)]
            if b"close" in [token.strip() for token in value.split(b",")]:
                return True
        start = lower_headers.find(b"connection:", start + 1)
    return False


def _from_request(request: Any) -> tuple[bytes, bytes, bytes, str, bool]:
    """What a hit keeps of a Twisted request: method, target, header lines, peer, TLS."""
    head = b"\r\n".join(name + b": " + value for name, values in request.requestHeaders.getAllRawHeaders()
                        for value in values)
    peer = getattr(request.getClientAddress(), "host", "")
    return request.method, request.uri, head, peer, request.isSecure()


_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """Now as an HTTP date, formatted once a second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, datetimeToString(second))
    return _date[1]
