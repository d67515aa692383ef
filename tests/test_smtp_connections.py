"""Every way the server ends a connection, on the plain listener and over TLS (STARTTLS and implicit).

Twisted's TLS layer closes differently from a plain TCP transport (it waits
for registered producers and for the handshake), so each behaviour runs on
all three paths.
"""

from __future__ import annotations

import socket
import time

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support.harness import Harness, RawClient

MODES = ("plain", "starttls", "implicit")
TIMEOUT = 1.0


def session(harness: Harness, mode: str) -> RawClient:
    """A client past the greeting and EHLO, on the given path."""
    if mode == "implicit":
        return RawClient.greeted(harness.smtps_port, implicit_tls=True)
    client = RawClient.greeted(harness.smtp_port)
    if mode == "starttls":
        client.starttls()
        code, lines = client.command(b"EHLO client.test")
        assert code == 250, lines
    return client


def closed_within(client: RawClient, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it stayed open that long."""
    start = time.monotonic()
    client.sock.settimeout(seconds)
    try:
        while client.sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass  # a reset, or TLS torn down without close_notify: closed all the same
    return time.monotonic() - start


class ConnectionEndTests(unittest.TestCase):
    async def start(self, **smtp: object) -> Harness:
        harness = Harness(self, smtp={"timeout": TIMEOUT, **smtp})
        await harness.start()
        return harness

    def open_connections(self, harness: Harness) -> int:
        factory = harness.service.smtp_connections
        return sum(factory.per_client.values())

    async def for_each_mode(self, harness: Harness, scenario: object) -> None:
        for mode in MODES:
            outcome = await deferToThread(scenario, harness, mode)
            self.assertTrue(outcome[0], (mode, outcome))
        await self.wait_until_no_connections(harness)

    async def wait_until_no_connections(self, harness: Harness) -> None:
        """Slots are given back when the server sees each connection end."""
        for _ in range(100):
            if self.open_connections(harness) == 0:
                return
            await deferToThread(time.sleep, 0.05)
        self.fail(f"{self.open_connections(harness)} connection slots still taken")

    async def test_quit_closes_at_once(self) -> None:
        harness = await self.start()

        def scenario(harness: Harness, mode: str) -> tuple:
            client = session(harness, mode)
            code, _ = client.command(b"QUIT")
            waited = closed_within(client, 1.0)
            return code == 221 and waited is not None, code, waited

        await self.for_each_mode(harness, scenario)

    async def test_idle_session_gets_421_and_is_closed(self) -> None:
        harness = await self.start()

        def scenario(harness: Harness, mode: str) -> tuple:
            client = session(harness, mode)
            code, lines = client.reply()  # nothing sent: the timeout's 421
            waited = closed_within(client, TIMEOUT + 1.0)
            return code == 421 and "4.4.2" in lines[0] and waited is not None, code, waited

        await self.for_each_mode(harness, scenario)

    async def test_too_many_errors_closes(self) -> None:
        harness = await self.start(max_errors=2)

        def scenario(harness: Harness, mode: str) -> tuple:
            client = session(harness, mode)
            codes = [client.command(b"BOGUS")[0] for _ in range(2)]
            client.send(b"BOGUS\r\n")
            codes += [client.reply()[0], client.reply()[0]]
            waited = closed_within(client, 1.0)
            return codes == [500, 500, 500, 421] and waited is not None, codes, waited

        await self.for_each_mode(harness, scenario)

    async def test_over_long_line_gets_one_500_and_is_closed(self) -> None:
        harness = await self.start()

        def scenario(harness: Harness, mode: str) -> tuple:
            client = session(harness, mode)
            client.send(b"NOOP " + b"x" * 20_000)  # the server sees the line too long here...
            time.sleep(0.2)
            client.send(b"x" * 20_000 + b"\r\nNOOP\r\n")  # ...and must not again here
            code, _ = client.reply()
            client.sock.settimeout(2.0)
            rest = b""
            try:
                while chunk := client.sock.recv(65536):
                    rest += chunk
            except TimeoutError:
                return False, "still open", client.buffer + rest
            except OSError:
                pass
            return code == 500 and client.buffer + rest == b"", code, client.buffer + rest

        await self.for_each_mode(harness, scenario)

    async def test_bare_line_feed_in_a_command_is_fatal_and_closes(self) -> None:
        harness = await self.start()

        def scenario(harness: Harness, mode: str) -> tuple:
            client = session(harness, mode)
            client.send(b"NOOP\nRSET\r\n")
            code, _ = client.reply()
            waited = closed_within(client, 1.0)
            return code == 500 and waited is not None, code, waited

        await self.for_each_mode(harness, scenario)

    async def test_silent_tcp_connection_is_closed_at_the_timeout(self) -> None:
        """A client that connects and says nothing: on the implicit-TLS port it never
        even sends a ClientHello, so no reply can reach it; it must go all the same."""
        harness = await self.start()

        def scenario(harness: Harness, mode: str) -> tuple:
            port = harness.smtps_port if mode == "implicit" else harness.smtp_port
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            start = time.monotonic()
            sock.settimeout(TIMEOUT + 2.0)
            try:
                while sock.recv(65536):
                    pass
            except TimeoutError:
                return False, "still open"
            except OSError:
                pass
            finally:
                sock.close()
            waited = time.monotonic() - start
            return waited >= TIMEOUT * 0.9, waited

        for mode in ("plain", "implicit"):
            outcome = await deferToThread(scenario, harness, mode)
            self.assertTrue(outcome[0], (mode, outcome))
        await self.wait_until_no_connections(harness)

    async def test_a_flood_of_silent_connections_does_not_lock_others_out(self) -> None:
        """Raw TCP connections to the implicit-TLS port that never start a handshake."""
        harness = await self.start(max_connections=30, max_connections_per_client=1000)

        def scenario() -> tuple:
            flood = [socket.create_connection(("127.0.0.1", harness.smtps_port), timeout=5)
                     for _ in range(30)]
            time.sleep(0.2)
            locked_out = RawClient(harness.smtp_port).reply()
            time.sleep(TIMEOUT + 1.0)
            fresh = [RawClient(harness.smtp_port).reply(),
                     RawClient(harness.smtps_port, implicit_tls=True).reply()]
            for sock in flood:
                sock.close()
            return locked_out, fresh

        locked_out, fresh = await deferToThread(scenario)
        self.assertEqual(locked_out[0], 421, locked_out)  # the test can fail: the limit was reached
        self.assertEqual([code for code, _ in fresh], [220, 220], fresh)
