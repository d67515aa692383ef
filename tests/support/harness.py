"""A real smtpeter service on free loopback ports, in the test's reactor, and clients for it."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from smtpeter.config import Config, parse_config
from smtpeter.envelope import MessageOptions
from smtpeter.service import SmtpeterService
from smtpeter.storage import Storage, open_storage
from tests.support import postgres

LOOPBACK = "tcp:0:interface=127.0.0.1"


@dataclass
class Login:
    account: str
    account_id: str
    username: str
    password: str
    token: str = ""


class Harness:
    """Starts smtpeter with a temporary data directory; stops it at test cleanup."""

    def __init__(self, test: unittest.TestCase, backend: str = "sqlite", clock: Any = None,
                 **sections: dict[str, Any]) -> None:
        self.test = test
        self.backend = backend
        self.clock = clock
        self.sections = sections
        self.data_dir = Path(tempfile.mkdtemp(prefix="smtpeter-test-"))
        test.addCleanup(shutil.rmtree, self.data_dir, True)
        self.url = (
            f"sqlite:///{self.data_dir / 'smtpeter.sqlite3'}" if backend == "sqlite"
            else postgres.cluster().create_database()
        )
        self.service: SmtpeterService | None = None

    def config(self) -> Config:
        raw: dict[str, dict[str, Any]] = {
            "server": {"hostname": "mx.test", "data_dir": str(self.data_dir)},
            "storage": {"url": self.url},
            "smtp": {"listen": [LOOPBACK], "listen_tls": [LOOPBACK]},
            "http": {"listen": [LOOPBACK]},
            # No test ever delivers off the machine: without a DNS server of
            # its own a test keeps its mail queued.
            "delivery": {"hold": True},
        }
        for name, values in self.sections.items():
            raw.setdefault(name, {}).update(values)
        return parse_config(raw)

    async def admin(self) -> Storage:
        """A second connection to the same database, as the CLI would have."""
        storage = await open_storage(self.url, reactor)
        self.test.addCleanup(lambda: defer.Deferred.fromCoroutine(storage.close()))
        return storage

    async def login(self, name: str, domains: tuple[str, ...] = ("example.com",),
                    options: dict[str, Any] | None = None) -> Login:
        storage = await self.admin()
        account = await storage.create_account(name)
        for domain in domains:
            await storage.add_domain(account.id, domain, approved=True)
        password = await storage.create_smtp_login(account.id, name, MessageOptions.parse(options or {}))
        _, token = await storage.create_api_token(account.id)
        return Login(name, account.id, name, password, token)

    async def start(self) -> Harness:
        self.service = SmtpeterService(self.config(), reactor, self.clock)
        self.service.startService()
        self.test.addCleanup(self.stop)
        await self.service.ready
        return self

    async def stop_async(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await service.stopService()

    def stop(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self.stop_async())

    @property
    def storage(self) -> Storage:
        assert self.service is not None and self.service.storage is not None
        return self.service.storage

    @property
    def smtp_port(self) -> int:
        return self.service.ports[0].getHost().port

    @property
    def smtps_port(self) -> int:
        return self.service.ports[1].getHost().port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.ports[2].getHost().port}"

    async def swaks(self, *args: str, port: int | None = None) -> tuple[int, str]:
        """Run the real swaks client against us; returns (exit status, transcript)."""
        swaks = shutil.which("swaks")
        if swaks is None:
            raise RuntimeError("swaks is not installed (.ci/run installs it)")
        out, err, code = await utils.getProcessOutputAndValue(
            swaks,
            ["--server", "127.0.0.1", "--port", str(port or self.smtp_port), "--timeout", "20",
             "--helo", "client.test", *args],
            env={"PATH": os.environ.get("PATH", "")},
        )
        return code, (out + err).decode("utf-8", "replace")


def wait_for_port(port: int, host: str = "127.0.0.1", process: Any = None, seconds: float = 30) -> None:
    """Block until something accepts connections on host:port (or ``process`` dies)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


class RawClient:
    """A blocking SMTP client that sends exactly the bytes it is given (run it in a thread)."""

    def __init__(self, port: int, implicit_tls: bool = False) -> None:
        self.sock: Any = socket.create_connection(("127.0.0.1", port), timeout=15)
        if implicit_tls:
            self.sock = self._tls(self.sock)
        self.buffer = b""

    @staticmethod
    def _tls(sock: socket.socket) -> ssl.SSLSocket:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(sock, server_hostname="mx.test")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[str]]:
        """Read one complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; got {self.buffer!r} after {lines}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), lines

    @classmethod
    def greeted(cls, port: int, ehlo: bool = True, implicit_tls: bool = False) -> RawClient:
        """Connected, past the 220 banner and (with ``ehlo``) our EHLO."""
        client = cls(port, implicit_tls)
        code, lines = client.reply()
        assert code == 220, lines
        if ehlo:
            code, lines = client.command(b"EHLO client.test")
            assert code == 250, lines
        return client

    @classmethod
    def ready_for_data(cls, port: int, sender: bytes = b"app@example.com",
                       recipient: bytes = b"user@example.net") -> RawClient:
        """Connected, greeted, with one transaction open up to the 354 (a trusted client)."""
        client = cls.greeted(port)
        for expected, line in ((250, b"MAIL FROM:<" + sender + b">"), (250, b"RCPT TO:<" + recipient + b">"),
                               (354, b"DATA")):
            code, lines = client.command(line)
            assert code == expected, (line, lines)
        return client

    def command(self, line: bytes) -> tuple[int, list[str]]:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        code, lines = self.command(b"STARTTLS")
        assert code == 220, lines
        self.sock = self._tls(self.sock)

    def closed_by_server(self) -> bool:
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


def auth_plain(username: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode())
