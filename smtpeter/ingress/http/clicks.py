"""The redirector and the open pixel on the HTTP listener, and the recorder of hits.

What /c/ and /o/ answer is redirector.py's (``Redirector``, ``answer_head``):
a ``302`` from the signed token alone, a pixel, or a ``404`` page; the hit
goes to the ``HitLog`` (events/hits.py), which writes it in a batch, scored
for bots, a moment later.

This is the hot path of the HTTP listener: one click per reader and link of
every mailing. With ``http.redirect_workers`` (redirect_workers.py), processes
of their own answer them on the plain listeners and send the hits here in
batches (``HitLog.add_raw``). In this process (the TLS listeners, and
every listener without workers), ``TrackingChannel`` answers these requests
as they arrive on a connection, before Twisted's request machinery (which
costs four times the rest, see bench/redirect.py), and sends the answer at
once rather than on the reactor's next turn; any other request, or one it
does not fully understand (a body, bare line feeds, a header block over
16 KB), goes to Twisted's ``HTTPChannel``, which keeps that connection from
then on. There, ``TrackingResource`` (site.APISite routes /c/ and /o/ to it
past Klein, as /v1/send) answers the same way.

The image proxy records its opens through ``HitRecorder.open`` (``api.hits``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from smtpeter.events.hits import Hit, HitLog
from smtpeter.events.model import CLICK, OPEN
from smtpeter.ingress.http.redirector import MAX_HEAD, PAGE_HEADERS, Redirector, answer_head, origin
from smtpeter.links import Link

__all__ = ["HitRecorder", "Redirector", "TrackingChannel", "TrackingResource", "send_now"]


class HitRecorder:
    """Hits on verified links, handed to the HitLog. ``open`` is the image proxy's way in."""

    def __init__(self, log: HitLog, clock: Any, public_url: str) -> None:
        self.log = log
        self.clock = clock
        self.origin, self.https = origin(public_url)

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
            for name, value in PAGE_HEADERS:
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
            answered = answer_head(self.redirector, data[:end], self._peer, self._secure)
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


def _from_request(request: Any) -> tuple[bytes, bytes, bytes, str, bool]:
    """What a hit keeps of a Twisted request: method, target, header lines, peer, TLS."""
    head = b"\r\n".join(name + b": " + value for name, values in request.requestHeaders.getAllRawHeaders()
                        for value in values)
    peer = getattr(request.getClientAddress(), "host", "")
    return request.method, request.uri, head, peer, request.isSecure()
