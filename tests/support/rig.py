"""A delivery test rig: smtpeter + a test DNS server + recording SMTP sinks on 127.0.0.x."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.ingress.submission import Sender
from smtpeter.storage.models import QueuedRecipient
from tests.support.clock import ShiftedClock
from tests.support.dns_server import TestDNSServer
from tests.support.harness import Harness
from tests.support.sink import Behaviour, RecordingSink, free_port_on

# The sender's own domain: DSNs come back here.
SENDER_IP = "127.0.0.9"
FAST_TIMEOUTS = {"connect": 2, "greeting": 5, "ehlo": 5, "starttls": 5, "mail": 5, "rcpt": 5, "data": 5,
                 "data_done": 5, "rset": 5, "quit": 2}


def message(subject: str = "hello", body: bytes = b"Hello.\r\n", sender: str = "news@example.com") -> bytes:
    return f"From: <{sender}>\r\nTo: <someone@dest.test>\r\nSubject: {subject}\r\n\r\n".encode() + body


async def sleep(seconds: float) -> None:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class Rig:
    """Call ``sink()`` for each receiving server, then ``start()``."""

    def __init__(self, test: unittest.TestCase, ips: tuple[str, ...] = ("127.0.0.2", "127.0.0.3",
                                                                         "127.0.0.4", SENDER_IP)) -> None:
        self.test = test
        self.port = free_port_on(*ips)
        self.dns = TestDNSServer()
        self.clock = ShiftedClock()
        self.sinks: dict[str, RecordingSink] = {}
        self.harness: Harness | None = None

    def sink(self, ip: str, behaviour: Behaviour | None = None) -> RecordingSink:
        sink = RecordingSink(behaviour, host=ip, port=self.port)
        self.sinks[ip] = sink
        return sink

    async def start(self, backend: str = "sqlite", sections: dict[str, dict[str, Any]] | None = None,
                    **delivery: Any) -> Rig:
        """``delivery`` settings over the rig's; ``sections`` other configuration sections."""
        await self.dns.start()
        self.test.addCleanup(lambda: defer.Deferred.fromCoroutine(self.dns.stop()))
        for sink in self.sinks.values():
            await sink.start()
            self.test.addCleanup(lambda s=sink: defer.Deferred.fromCoroutine(s.stop()))
        self.dns.mx("example.com", (10, "mx.example.com"))
        self.dns.a("mx.example.com", SENDER_IP)
        settings = {"hold": False, "port": self.port, "helo_name": "out.smtpeter.test", "shutdown_grace": 0.5,
                    "timeouts": dict(FAST_TIMEOUTS), **delivery}
        if "timeouts" in delivery:
            settings["timeouts"] = {**FAST_TIMEOUTS, **delivery["timeouts"]}
        dns = {"nameservers": self.dns.nameservers, "timeout": 1.0}
        self.harness = Harness(self.test, backend, clock=self.clock,
                               **{**(sections or {}), "delivery": settings, "dns": dns})
        self.login = await self.harness.login("acme", domains=("example.com",))
        await self.harness.start()
        return self

    @property
    def storage(self) -> Any:
        return self.harness.storage

    @property
    def service(self) -> Any:
        return self.harness.service

    async def send(self, *recipients: str, envelope: str | None = "news@example.com",
                   data: bytes | None = None, options: dict[str, Any] | None = None,
                   notify: str | None = None, orcpt: bool = False, ret: str | None = None,
                   envid: str | None = None, expires: float | None = None,
                   smtputf8: bool = False) -> list[str]:
        rcpts = tuple(Recipient(r, notify, f"rfc822;{r}" if orcpt else None) for r in recipients)
        return await self.service.submission.submit(
            Sender(self.login.account_id, MessageOptions()), "smtp",
            Envelope(envelope, rcpts, ret, envid, smtputf8),
            data or message(), options=MessageOptions.parse(options or {}), expires=expires,
        )

    async def recipient(self, message_id: str) -> QueuedRecipient:
        return await self.storage.recipient(message_id)

    async def wait_for(self, message_id: str, *states: str, timeout: float = 15.0,
                       attempts: int | None = None) -> QueuedRecipient:
        """Until the recipient is in one of ``states`` (and has made ``attempts`` attempts)."""
        deadline = reactor.seconds() + timeout
        while True:
            entry = await self.recipient(message_id)
            if entry.state in states and (attempts is None or entry.attempts >= attempts):
                return entry
            if reactor.seconds() > deadline:
                raise TimeoutError(f"{message_id} stayed {entry.state} ({entry.attempts} attempts, "
                                           f"{entry.last_code} {entry.last_description})")
            await sleep(0.05)

    async def advance(self, seconds: float) -> None:
        """Move the queue's clock forward and let the scheduler look again."""
        self.clock.advance(seconds)
        self.service.scheduler.wake()

    async def events(self, message_id: str) -> list:
        return await self.storage.events(message_id)
