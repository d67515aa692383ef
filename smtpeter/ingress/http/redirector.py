"""The answers to /c/ (the redirector) and /o/ (the open pixel), without Twisted.

``/c/TOKEN/scheme/host/path?query`` (smtpeter/tracking_urls.py) answers
``302`` to the URL after the token when the token is ours, untouched, names a
click and vouches for exactly that URL (HMAC-SHA256, compared in constant
time); ``/o/TOKEN.gif`` answers a 1x1 transparent GIF for an open token.
Nothing is read from storage to answer: the token carries all of it. Anything
else, a tampered, truncated, re-signed or unknown token, is a ``404`` page:
never a redirect to a URL we did not sign. HEAD is answered as GET is,
without the body. The hit goes to ``hits.add`` (the main process's
HitRecorder, clicks.py, or a redirect worker's batch, redirect_worker.py).

``answer_head`` answers one request from its header block as it came off the
socket, for the paths that read requests before Twisted's machinery does:
clicks.TrackingChannel in the main process and the redirect workers' loop.
This module imports nothing of Twisted, so a worker starts small.
"""

from __future__ import annotations

import email.utils
import time
from typing import Protocol
from urllib.parse import urlsplit

from smtpeter import tracking_urls
from smtpeter.events.bots import HONEYPOT_POSITION
from smtpeter.links import Link, LinkSigner

CLICK, OPEN = "click", "open"  # kinds of links (links.KINDS) and of hits (events.model)
MAX_HEAD = 16 * 1024  # header bytes the fast path reads; a bigger request goes to Twisted
# A transparent 1x1 GIF.
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NOT_FOUND_PAGE = (b"<!doctype html><meta charset=utf-8><title>Not found</title>"
                  b"<p>This link is not valid. If you copied it, check that you copied all of it.</p>")
HONEYPOT_PAGE = b"<!doctype html><meta charset=utf-8><title>Nothing here</title>"
_NO_STORE = (b"cache-control", b"no-store, private")
PAGE_HEADERS = [(b"content-type", b"text/html; charset=utf-8"), (b"x-content-type-options", b"nosniff"),
                (b"content-security-policy", b"default-src 'none'"), _NO_STORE]
_REASONS = {200: b"OK", 302: b"Found", 404: b"Not Found"}

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body (sent for GET only)


class Hits(Protocol):
    def add(self, kind: str, link: Link, destination: str, method: bytes, uri: bytes, head: bytes,
            peer: str, secure: bool) -> None:
        """Take the hit of a verified ``link`` (on the request path: keep it cheap)."""


def origin(public_url: str) -> tuple[str, bool]:
    """What a hit's URL starts with (scheme and host of ``public_url``), and whether that is https
    (a hit then counts as over TLS, whatever proxy took the TLS off)."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}", parts.scheme == "https"


class Redirector:
    """The answers to /c/ and /o/ requests, the same for every path that reads them."""

    def __init__(self, signer: LinkSigner, hits: Hits, public_url: str) -> None:
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
                        return 200, PAGE_HEADERS, HONEYPOT_PAGE
                    return 302, [(b"location", target.encode()), _NO_STORE], b""
        else:
            token = tracking_urls.parse_pixel(path)
            link = self.signer.verify(token) if token is not None else None
            if link is not None and link.kind == OPEN:
                self.hits.add(OPEN, link, "", method, uri, head, peer, secure)
                return 200, [(b"content-type", b"image/gif"), _NO_STORE, (b"pragma", b"no-cache")], PIXEL
        return 404, PAGE_HEADERS, NOT_FOUND_PAGE


def answer_head(redirector: Redirector, head: bytes, peer: str, secure: bool) -> tuple[bytes, bool] | None:
    """The bytes answering one request (its header block, without the blank line), and whether to
    close after them; None: not ours to answer (Twisted's HTTP machinery reads it)."""
    line_end = head.find(b"\r\n")
    request_line, headers = (head, b"") if line_end < 0 else (head[:line_end], head[line_end + 2:])
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or not redirector.ours(parts[1]):
        return None
    method, uri, version = parts
    lower = headers.lower()
    if (version not in (b"HTTP/1.1", b"HTTP/1.0") or b"content-length:" in lower
            or b"transfer-encoding:" in lower or lower.count(b"\n") != lower.count(b"\r\n")
            or b"\r\n " in lower or b"\r\n\t" in lower):
        return None  # a body, bare line feeds, folded headers: Twisted reads those
    close = version == b"HTTP/1.0" or _closes(lower)
    status, fields, body = redirector.answer(method, uri, headers, peer, secure)
    out = [b"HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-length: %d\r\n" % (
        status, _REASONS[status], _http_date(), len(body))]
    out += [name + b": " + value + b"\r\n" for name, value in fields]
    out.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if method == b"GET":
        out.append(body)
    return b"".join(out), close


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


_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """Now as an HTTP date, formatted once a second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, email.utils.formatdate(second, usegmt=True).encode("ascii"))
    return _date[1]
