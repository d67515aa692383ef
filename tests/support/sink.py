"""A scripted, recording SMTP server for delivery tests: an independent, deliberately simple implementation.

It shares no code with smtpeter.ingress, so a bug there cannot hide the same bug here.  Tests start a
``RecordingSink`` on a loopback address, let the code under test deliver to it, then inspect what it
recorded (``received``, ``attempts``, ``commands``, connection counters).  A ``Behaviour`` scripts the
replies: per-address refusals, greylisting, stalls, dropped connections, STARTTLS, connection limits.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, ssl
from twisted.protocols.basic import LineReceiver

# Certificates only: the sink's SMTP is its own, independent of the code under test.
from smtpeter.tls import make_self_signed, server_context

STALL_STATES = ("banner", "ehlo", "mail", "rcpt", "data", "dot")
GREYLISTED = (451, "4.7.1 Greylisted, try again in 5 minutes")
END_OF_DATA = b"\r\n.\r\n"


@dataclass
class Received:
    """One transaction the sink accepted (or was offered)."""

    helo: str
    mail_from: str  # address inside <>, "" for the null sender
    mail_params: dict[str, str | None]  # ESMTP parameters of MAIL, keys upper-case
    recipients: list[str]  # accepted recipients, in order
    rcpt_params: dict[str, dict[str, str | None]]  # address -> its RCPT parameters
    data: bytes  # after dot-unstuffing, CRLF kept, final ".\r\n" removed
    raw_data: bytes  # exactly the bytes between the 354 and the end, final "\r\n.\r\n" included
    tls: bool
    connection: int  # which connection (1, 2, ...) carried it
    peer: str  # client IP


def _default_extensions() -> list[str]:
    return ["PIPELINING", "8BITMIME", "SMTPUTF8", "DSN", "SIZE 104857600", "ENHANCEDSTATUSCODES"]


@dataclass
class Behaviour:
    banner: tuple[int, str] = (220, "sink.test ESMTP")
    extensions: list[str] = field(default_factory=_default_extensions)
    starttls: bool = False  # offer STARTTLS (self-signed certificate unless tls_cert/tls_key are given)
    tls_cert: str | None = None  # PEM certificate path (optional)
    tls_key: str | None = None  # PEM key path (optional)
    ehlo_reply: tuple[int, str] | None = None  # e.g. (502, "not implemented") to force the HELO fallback
    mail_reply: Callable[[str], tuple[int, str]] | None = None  # by sender; default 250 2.1.0
    rcpt_reply: Callable[[str], tuple[int, str]] | None = None  # by recipient; default 250 2.1.5
    data_reply: Callable[[Received], tuple[int, str]] | None = None  # final dot; default 250 2.0.0
    greylist: bool = False  # first attempt per (sender, recipient) gets 451 4.7.1, later ones 250
    drop_after_data_bytes: int | None = None  # abort the TCP connection once this many DATA bytes arrived
    stall_at: str | None = None  # never answer at: banner, ehlo, mail, rcpt, data (354), dot (final)
    max_connections: int | None = None  # refuse connections beyond this with 421 4.7.0

    def __post_init__(self) -> None:
        if self.stall_at is not None and self.stall_at not in STALL_STATES:
            raise ValueError(f"stall_at must be one of {STALL_STATES}, not {self.stall_at!r}")


_self_signed: tuple[Path, Path] | None = None


def _tls_context(behaviour: Behaviour) -> ssl.CertificateOptions:
    """The given certificate, or a throwaway one made once per test process."""
    global _self_signed
    if behaviour.tls_cert and behaviour.tls_key:
        return server_context(Path(behaviour.tls_cert), Path(behaviour.tls_key))
    if _self_signed is None:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-sink-tls-"))
        _self_signed = (directory / "sink.crt", directory / "sink.key")
        make_self_signed("sink.test", *_self_signed)
    return server_context(*_self_signed)


def _parse_path(text: str, keyword: str) -> tuple[str, dict[str, str | None]] | None:
    """``FROM:<addr> PARAMS`` (or ``TO:``) -> (addr, params), or None if malformed."""
    if text[: len(keyword)].upper() != keyword:
        return None
    rest = text[len(keyword):].lstrip(" ")
    if not rest.startswith("<"):
        return None
    quoted = False
    end = -1
    i = 1
    while i < len(rest):
        char = rest[i]
        if char == "\\" and quoted:
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            end = i
            break
        i += 1
    if end < 0:
        return None
    address = rest[1:end]
    if ":" in address and address.startswith("@"):  # source route: <@a,@b:user@c>
        address = address.split(":", 1)[1]
    params: dict[str, str | None] = {}
    for word in rest[end + 1:].split():
        key, sep, value = word.partition("=")
        params[key.upper()] = value if sep else None
    return address, params


def _unstuff(body: bytes) -> bytes:
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n"))


class SinkProtocol(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink
        self.behaviour = sink.behaviour
        self.number = 0
        self.peer = ""
        self.refused = False
        self.stalled = False
        self.quitting = False
        self.tls = False
        self.helo: str | None = None
        self.transaction: Received | None = None
        self.raw = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    # -- connection ---------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", "")
        self.sink._protocols.add(self)
        limit = self.behaviour.max_connections
        if limit is not None and self.sink.connections_open >= limit:
            self.refused = True
            self.sink.refused_connections += 1
            self.reply(421, "4.7.0 too many connections")
            self.transport.loseConnection()
            return
        self.sink.connections_total += 1
        self.sink.connections_open += 1
        self.sink.max_concurrent = max(self.sink.max_concurrent, self.sink.connections_open)
        self.number = self.sink.connections_total
        if self.behaviour.stall_at == "banner":
            self.stalled = True
            return
        self.reply(*self.behaviour.banner)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.refused:
            self.sink.connections_open -= 1
        self.sink._protocols.discard(self)
        self.closed.callback(None)

    def reply(self, code: int, text: str) -> None:
        lines = text.split("\n") or [""]
        out = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
        self.transport.write("".join(line + "\r\n" for line in out).encode("utf-8"))

    def stall(self, state: str) -> bool:
        if self.behaviour.stall_at == state:
            self.stalled = True
        return self.stalled

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply(500, "5.5.2 line too long")
        self.transport.loseConnection()

    # -- commands -----------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.sink.commands.append(text)
        if self.stalled or self.refused or self.quitting:
            return
        verb, _, argument = text.partition(" ")
        handler = getattr(self, "smtp_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            self.reply(500, "5.5.1 command unrecognized")
            return
        handler(argument.strip())

    def smtp_EHLO(self, argument: str) -> None:
        if self.stall("ehlo"):
            return
        if not argument:
            self.reply(501, "5.5.4 EHLO needs a domain")
            return
        if self.behaviour.ehlo_reply is not None:
            code, text = self.behaviour.ehlo_reply
            if 200 <= code < 300:
                self.helo, self.transaction = argument, None
            self.reply(code, text)
            return
        self.helo, self.transaction = argument, None
        extensions = list(self.behaviour.extensions)
        if self.behaviour.starttls and not self.tls:
            extensions.append("STARTTLS")
        self.reply(250, "\n".join([f"sink.test greets {argument}", *extensions]))

    def smtp_HELO(self, argument: str) -> None:
        if self.stall("ehlo"):
            return
        if not argument:
            self.reply(501, "5.5.4 HELO needs a domain")
            return
        self.helo, self.transaction = argument, None
        self.reply(250, "sink.test")

    def smtp_STARTTLS(self, argument: str) -> None:
        if not self.behaviour.starttls:
            self.reply(502, "5.5.1 STARTTLS not offered")
        elif self.tls:
            self.reply(503, "5.5.1 already under TLS")
        elif argument:
            self.reply(501, "5.5.4 no parameters allowed")
        else:
            self.reply(220, "2.0.0 ready to start TLS")
            # Anything pipelined behind STARTTLS in plaintext is discarded (RFC 3207 section 4.2).
            self.clearLineBuffer()
            self.transport.startTLS(_tls_context(self.behaviour))
            self.tls = True
            self.helo = None
            self.transaction = None

    def smtp_MAIL(self, argument: str) -> None:
        if self.stall("mail"):
            return
        if self.helo is None:
            self.reply(503, "5.5.1 EHLO or HELO first")
            return
        if self.transaction is not None:
            self.reply(503, "5.5.1 nested MAIL command")
            return
        parsed = _parse_path(argument, "FROM:")
        if parsed is None:
            self.reply(501, "5.5.4 syntax: MAIL FROM:<address>")
            return
        sender, params = parsed
        code, text = (self.behaviour.mail_reply or (lambda _s: (250, "2.1.0 sender ok")))(sender)
        if 200 <= code < 300:
            self.transaction = Received(
                helo=self.helo, mail_from=sender, mail_params=params, recipients=[], rcpt_params={},
                data=b"", raw_data=b"", tls=self.tls, connection=self.number, peer=self.peer,
            )
        self.reply(code, text)

    def smtp_RCPT(self, argument: str) -> None:
        if self.stall("rcpt"):
            return
        if self.transaction is None:
            self.reply(503, "5.5.1 MAIL first")
            return
        parsed = _parse_path(argument, "TO:")
        if parsed is None:
            self.reply(501, "5.5.4 syntax: RCPT TO:<address>")
            return
        recipient, params = parsed
        if self.behaviour.greylist:
            key = (self.transaction.mail_from, recipient)
            if key not in self.sink._greylist_seen:
                self.sink._greylist_seen.add(key)
                self.reply(*GREYLISTED)
                return
        code, text = (self.behaviour.rcpt_reply or (lambda _r: (250, "2.1.5 recipient ok")))(recipient)
        if 200 <= code < 300:
            self.transaction.recipients.append(recipient)
            self.transaction.rcpt_params[recipient] = params
        self.reply(code, text)

    def smtp_DATA(self, argument: str) -> None:
        if self.stall("data"):
            return
        if self.transaction is None:
            self.reply(503, "5.5.1 MAIL first")
        elif not self.transaction.recipients:
            self.reply(554, "5.5.1 no valid recipients")
        elif argument:
            self.reply(501, "5.5.4 no parameters allowed")
        else:
            self.raw = b""
            self.reply(354, "end data with <CR><LF>.<CR><LF>")
            self.setRawMode()

    def smtp_RSET(self, argument: str) -> None:
        self.transaction = None
        self.reply(250, "2.0.0 reset")

    def smtp_NOOP(self, argument: str) -> None:
        self.reply(250, "2.0.0 ok")

    def smtp_QUIT(self, argument: str) -> None:
        self.quitting = True
        self.reply(221, "2.0.0 bye")
        self.transport.loseConnection()

    # -- message data -------------------------------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        start = max(0, len(self.raw) - 4)  # the end marker may straddle two chunks
        self.raw += data
        # The start of the data counts as following a CRLF, so a lone ".\r\n" is an empty message.
        position = (b"\r\n" + self.raw).find(END_OF_DATA, start)
        end = None if position < 0 else position + 3  # index just past the final ".\r\n" in self.raw
        size = len(self.raw) if end is None else end
        limit = self.behaviour.drop_after_data_bytes
        if limit is not None and size >= limit:
            self.raw = b""
            self.stalled = True
            self.transport.abortConnection()
            return
        if end is None:
            return
        raw, rest = self.raw[:end], self.raw[end:]
        self.raw = b""
        self.finish_data(raw)
        self.setLineMode(rest)

    def finish_data(self, raw: bytes) -> None:
        transaction, self.transaction = self.transaction, None
        assert transaction is not None
        transaction.raw_data = raw
        transaction.data = _unstuff(raw[:-3])
        self.sink.attempts.append(transaction)
        if self.stall("dot"):
            return
        if self.behaviour.data_reply is not None:
            code, text = self.behaviour.data_reply(transaction)
        else:
            code, text = 250, f"2.0.0 queued as {len(self.sink.received) + 1}"
        if 200 <= code < 300:
            self.sink._accept(transaction)
        self.reply(code, text)


class _SinkFactory(protocol.Factory):
    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink

    def buildProtocol(self, addr: Any) -> SinkProtocol:
        return SinkProtocol(self.sink)


class RecordingSink:
    """An SMTP server on ``host:port`` (port 0: any free one) that records what it is sent."""

    def __init__(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1", port: int = 0,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self.port = port
        self.reactor = reactor
        self.received: list[Received] = []
        self.attempts: list[Received] = []
        self.commands: list[str] = []
        self.connections_total = 0
        self.connections_open = 0
        self.max_concurrent = 0
        self.refused_connections = 0
        self._listening: Any = None
        self._protocols: set[SinkProtocol] = set()
        self._greylist_seen: set[tuple[str, str]] = set()
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    async def start(self) -> RecordingSink:
        if self.behaviour.starttls:
            _tls_context(self.behaviour)  # fail here, not mid-session, on a bad certificate
        self._listening = self.reactor.listenTCP(self.port, _SinkFactory(self), interface=self.host)
        self.port = self._listening.getHost().port
        return self

    async def stop(self) -> None:
        """Close the listening port and every open connection; returns once all are gone."""
        listening, self._listening = self._listening, None
        if listening is not None:
            await listening.stopListening()
        protocols = list(self._protocols)
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.abortConnection()
        for proto in protocols:
            await proto.closed

    def _accept(self, transaction: Received) -> None:
        self.received.append(transaction)
        ready = [(count, d) for count, d in self._waiters if len(self.received) >= count]
        self._waiters = [(count, d) for count, d in self._waiters if len(self.received) < count]
        for _count, d in ready:
            d.callback(None)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until ``len(received) >= count``; TimeoutError if that takes longer than ``timeout`` seconds."""
        if len(self.received) >= count:
            return
        entry: tuple[int, defer.Deferred[None]]

        def cancel(_d: defer.Deferred[None]) -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)

        waiter: defer.Deferred[None] = defer.Deferred(cancel)
        entry = (count, waiter)
        self._waiters.append(entry)
        waiter.addTimeout(timeout, self.reactor)
        try:
            await waiter
        except defer.TimeoutError:
            raise TimeoutError(
                f"sink {self.host}:{self.port} received {len(self.received)} of {count} messages "
                f"in {timeout}s ({len(self.attempts)} attempts)"
            ) from None


def free_port_on(*hosts: str) -> int:
    """A TCP port that is free on every given address at once (default 127.0.0.1)."""
    hosts = hosts or ("127.0.0.1",)
    for _attempt in range(100):
        sockets: list[socket.socket] = []
        try:
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(first)
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            for host in hosts[1:]:
                other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(other)
                other.bind((host, port))
        except OSError:
            continue
        else:
            return port
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no TCP port free on all of {hosts}")
