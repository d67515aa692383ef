"""The submission server over real loopback sockets: smuggling, STARTTLS, pipelining, limits."""

from __future__ import annotations

import base64
import json

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from smtpeter.mime import header
from tests.support import postgres
from tests.support.harness import Harness, RawClient, auth_plain
from tests.test_smtp_data import FAKE_ENDS, SMUGGLED

BODY = b"From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: hello\r\n\r\nHello there.\r\n"


class SubmissionServerTests(unittest.TestCase):
    async def start(self, backend: str = "sqlite", **smtp: object) -> Harness:
        harness = Harness(self, backend, smtp={"trusted_networks": ["127.0.0.0/8"],
                                               "trusted_account": "apps", **smtp})
        self.apps = await harness.login("apps")
        self.user = await harness.login("acme", domains=("acme.test",))
        return await harness.start()

    async def queued(self, harness: Harness) -> list:
        return await harness.storage.queue(state=None, limit=1000)

    async def test_fake_end_of_data_never_smuggles_a_message(self) -> None:
        harness = await self.start()

        def scenario(fake: bytes) -> list:
            client = RawClient(harness.smtp_port)
            replies = [client.reply()]
            client.send(b"EHLO client.test\r\n")
            replies.append(client.reply())
            for line in (b"MAIL FROM:<app@example.com>", b"RCPT TO:<user@example.net>", b"DATA"):
                replies.append(client.command(line))
            client.send(BODY + b"line" + fake + SMUGGLED)
            replies.append(client.reply())
            replies.append(client.command(b"QUIT"))
            client.close()
            return [code for code, _ in replies]

        for fake in FAKE_ENDS:
            codes = await deferToThread(scenario, fake)
            self.assertEqual(codes, [220, 250, 250, 250, 354, 550, 221], fake)
        self.assertEqual(await self.queued(harness), [])

        # The same conversation without the fake end is accepted: the test can fail.
        def clean() -> list:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(BODY + b"line\r\n.\r\n")
            return client.reply()

        code, lines = await deferToThread(clean)
        self.assertEqual(code, 250, lines)
        self.assertEqual(len(await self.queued(harness)), 1)

    async def test_starttls_discards_pipelined_plaintext(self) -> None:
        harness = await self.start()

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port)
            client.command(b"MAIL FROM:<app@example.com>")
            # One plaintext write: STARTTLS plus a command an attacker injected behind it.
            client.send(b"STARTTLS\r\nEHLO injected.test\r\n")
            code, _ = client.reply()
            assert code == 220
            client.sock = client._tls(client.sock)
            first_inside_tls = client.command(b"NOOP")
            # RFC 3207 §4.2: the envelope from before TLS is gone.
            rcpt = client.command(b"RCPT TO:<user@example.net>")
            return [first_inside_tls, rcpt]

        (noop, rcpt) = await deferToThread(scenario)
        self.assertEqual(noop, (250, ["250 2.0.0 Ok"]))
        self.assertEqual(rcpt[0], 503)

    async def test_long_line_in_data_does_not_fall_back_to_commands(self) -> None:
        harness = await self.start()

        def scenario() -> list:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(BODY + b"x" * 20000 + b"\r\n" + SMUGGLED + b"QUIT\r\n")
            replies = [client.reply(), client.reply()]
            return replies

        (refused, bye) = await deferToThread(scenario)
        self.assertEqual(refused[0], 552)
        self.assertIn("line longer than 16384", refused[1][0])
        self.assertEqual(bye[0], 221)
        self.assertEqual(await self.queued(harness), [])

    async def test_cr_inside_mail_from_is_refused(self) -> None:
        harness = await self.start()

        def scenario() -> tuple:
            client = RawClient.greeted(harness.smtp_port)
            reply = client.command(b"MAIL FROM:<app@example.com>\rRCPT TO:<user@example.net>")
            return reply, client.closed_by_server()

        (code, _), closed = await deferToThread(scenario)
        self.assertEqual(code, 500)
        self.assertTrue(closed)
        self.assertEqual(await self.queued(harness), [])

    async def test_pipelined_replies_stay_in_order_across_async_steps(self) -> None:
        harness = await self.start()
        user = self.user

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port)
            client.starttls()
            client.command(b"EHLO client.test")
            client.send(b"\r\n".join([
                auth_plain(user.username, user.password),
                b"MAIL FROM:<me@acme.test>", b"RCPT TO:<a@example.net>", b"RCPT TO:<b@example.net>",
                b"DATA", b"",
            ]))
            replies = [client.reply() for _ in range(5)]
            body = b"From: me@acme.test\r\nSubject: one\r\n\r\n1\r\n.\r\n"
            client.send(body + b"MAIL FROM:<me@acme.test>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
            replies += [client.reply() for _ in range(4)]
            client.send(body.replace(b"one", b"two") + b"QUIT\r\n")
            replies += [client.reply() for _ in range(2)]
            return replies

        replies = await deferToThread(scenario)
        self.assertEqual([code for code, _ in replies],
                         [235, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221])
        # Each 250 to DATA names one id per recipient.
        self.assertEqual(len(replies[5][1]), 3)
        self.assertTrue(replies[5][1][1].endswith(" for a@example.net"))
        self.assertEqual(len(await self.queued(harness)), 3)

    async def test_auth_without_arguments_gets_501_and_the_session_lives(self) -> None:
        harness = await self.start()

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port)
            client.starttls()
            client.command(b"EHLO client.test")
            return [client.command(b"AUTH"),
                    client.command(b"AUTH PLAIN " + base64.b64encode(b"only\0two")),
                    client.command(b"NOOP")]

        replies = await deferToThread(scenario)
        self.assertEqual([code for code, _ in replies], [501, 501, 250])

    async def test_auth_initial_response_of_rfc4954_maximum_is_read(self) -> None:
        """12,288 octets of initial response (RFC 4954 §4) after "AUTH PLAIN ": checked, not
        refused as an over-long line; one octet more is a 500 for the exchange, not the end."""
        harness = await self.start()

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port)
            client.starttls()
            client.command(b"EHLO client.test")
            longest = base64.b64encode(b"\0acme\0" + b"p" * (9216 - 6))
            assert len(longest) == 12288
            return [client.command(b"AUTH PLAIN " + longest),
                    client.command(b"AUTH PLAIN " + longest + b"AAAA"),
                    client.command(b"NOOP")]

        replies = await deferToThread(scenario)
        self.assertEqual([code for code, _ in replies], [535, 500, 250], replies)
        self.assertIn("5.5.6", replies[1][1][0])

    async def test_size_limits(self) -> None:
        harness = await self.start(max_message_size=2000)

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port, ehlo=False)
            ehlo = client.command(b"EHLO client.test")
            declared = client.command(b"MAIL FROM:<app@example.com> SIZE=2001")
            client.command(b"MAIL FROM:<app@example.com>")
            client.command(b"RCPT TO:<user@example.net>")
            client.command(b"DATA")
            client.send(BODY + b"y" * 3000 + b"\r\n.\r\n")
            return [ehlo, declared, client.reply(), client.command(b"NOOP")]

        ehlo, declared, actual, noop = await deferToThread(scenario)
        self.assertIn("250-SIZE 2000", ehlo[1])
        self.assertEqual(declared[0], 552)
        self.assertEqual(actual[0], 552)
        self.assertEqual(noop[0], 250)
        self.assertEqual(await self.queued(harness), [])

    async def test_smtputf8_submission(self) -> None:
        harness = await self.start()

        def scenario() -> list:
            client = RawClient.greeted(harness.smtp_port)
            replies = [client.command("MAIL FROM:<jörg@example.com> SMTPUTF8 BODY=8BITMIME".encode()),
                       client.command("RCPT TO:<用户@例子.广告>".encode()),
                       client.command(b"DATA")]
            client.send("From: Jörg <jörg@example.com>\r\nSubject: grüße\r\n\r\nÄÖÜ\r\n.\r\n".encode())
            replies.append(client.reply())
            return replies

        replies = await deferToThread(scenario)
        self.assertEqual([code for code, _ in replies], [250, 250, 354, 250])
        (entry,) = await self.queued(harness)
        self.assertEqual(entry.address, "用户@例子.广告")
        content = await harness.storage.message_content(entry.id)
        self.assertTrue(content.envelope.smtputf8)
        self.assertEqual(content.envelope.body, "8BITMIME")
        self.assertTrue(content.mime.endswith("Subject: grüße\r\n\r\nÄÖÜ\r\n".encode()))

    async def test_option_headers_are_read_and_stripped(self) -> None:
        harness = await self.start()

        def send(headers: bytes) -> tuple:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(headers + BODY + b".\r\n")
            return client.reply()

        code, lines = await deferToThread(send, b"X-Smtpeter-TrackClicks: yes\r\nx-smtpeter-tags: a,b\r\n"
                                                 b"X-SMTPeter-InlineCSS: false\r\nX-Other: kept\r\n")
        self.assertEqual(code, 250, lines)
        (entry,) = await self.queued(harness)
        content = await harness.storage.message_content(entry.id)
        self.assertEqual(content.options.as_dict(), {"trackclicks": True, "inlinecss": False})
        self.assertEqual(content.tags, ["a", "b"])
        names = [f.name for f in header.parse(content.mime).fields]
        self.assertNotIn("x-smtpeter-trackclicks", names)
        self.assertIn("x-other", names)
        self.assertEqual(names[0], "received")
        self.assertIn("message-id", names)
        self.assertIn("date", names)
        events = await harness.storage.events(entry.id)
        self.assertEqual(events[0].data["properties"], "trackclicks")
        self.assertEqual(events[0].data["tags"], ["a", "b"])

        code, lines = await deferToThread(send, b"X-Smtpeter-TrackOpens: maybe\r\n")
        self.assertEqual(code, 550)
        self.assertIn("x-smtpeter-trackopens", lines[0])
        self.assertEqual(len(await self.queued(harness)), 1)

    async def test_login_defaults_apply_and_headers_override(self) -> None:
        harness = Harness(self)
        login = await harness.login("news", options={"trackclicks": True, "trackopens": True})
        await harness.start()

        def scenario() -> int:
            client = RawClient.greeted(harness.smtps_port, ehlo=False, implicit_tls=True)
            ehlo = client.command(b"EHLO client.test")
            assert "250 AUTH PLAIN LOGIN" in ehlo[1] and not any("STARTTLS" in x for x in ehlo[1])
            client.command(auth_plain(login.username, login.password))
            client.command(b"MAIL FROM:<news@example.com>")
            client.command(b"RCPT TO:<r@example.net>")
            client.command(b"DATA")
            client.send(b"X-Smtpeter-TrackOpens: false\r\nFrom: news@example.com\r\n\r\nx\r\n.\r\n")
            return client.reply()[0]

        self.assertEqual(await deferToThread(scenario), 250)
        (entry,) = await self.queued(harness)
        content = await harness.storage.message_content(entry.id)
        self.assertEqual(content.options.as_dict(), {"trackclicks": True, "trackopens": False})

    async def test_connections_per_client_are_bounded(self) -> None:
        harness = Harness(self, smtp={"max_connections_per_client": 2})
        await harness.start()

        def scenario() -> tuple:
            first, second = RawClient(harness.smtp_port), RawClient(harness.smtp_port)
            first.reply(), second.reply()
            third = RawClient(harness.smtp_port)
            refused = third.reply()
            first.close()
            return refused, third.closed_by_server()

        (code, _), closed = await deferToThread(scenario)
        self.assertEqual(code, 421)
        self.assertTrue(closed)

    async def test_idle_session_times_out(self) -> None:
        harness = Harness(self, smtp={"timeout": 0.5})
        await harness.start()

        def scenario() -> tuple:
            client = RawClient.greeted(harness.smtp_port, ehlo=False)
            return client.reply()

        code, lines = await deferToThread(scenario)
        self.assertEqual(code, 421)
        self.assertIn("4.4.2", lines[0])

    async def test_dead_database_gives_451_never_250(self) -> None:
        cluster = postgres.cluster()
        harness = await self.start(backend="postgresql")

        def send() -> tuple:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(BODY + b".\r\n")
            return client.reply()

        cluster.stop("immediate")
        try:
            code, lines = await deferToThread(send)
        finally:
            cluster.start()
        self.assertEqual(code, 451, lines)
        self.assertIn("4.3.0", lines[0])
        code, lines = await deferToThread(send)
        self.assertEqual(code, 250, lines)
        self.assertEqual(len(await self.queued(harness)), 1)

    async def test_client_that_floods_commands_is_cut_off(self) -> None:
        harness = await self.start()

        def scenario() -> tuple:
            client = RawClient.greeted(harness.smtp_port, ehlo=False)
            client.sock.settimeout(10)
            try:
                client.sock.sendall(b"NOOP\r\n" * 200_000)  # 1.2 MB, replies never read meanwhile
            except OSError:
                pass  # the server hung up on us: what we expect
            replies = []
            try:
                while True:
                    replies.append(client.reply())
            except (ConnectionError, OSError):
                pass
            return replies

        replies = await deferToThread(scenario)
        self.assertLess(len(replies), 200)
        self.assertEqual(replies[-1][0], 421)

    async def test_broken_authentication_backend_gets_454_not_a_hang(self) -> None:
        harness = await self.start()

        class Broken:
            def login(self, *args: object) -> None:
                raise RuntimeError("the credential store fell over")

        for port in harness.service.ports:
            factory = getattr(port.factory, "wrappedFactory", port.factory)
            factory.portal = Broken()

        def scenario() -> list:
            client = RawClient.greeted(harness.smtps_port, implicit_tls=True)
            return [client.command(auth_plain("acme", "x")), client.command(b"NOOP")]

        replies = await deferToThread(scenario)
        self.assertEqual([code for code, _ in replies], [454, 250])

    async def test_storage_that_never_answers_gets_451(self) -> None:
        from smtpeter.ingress.smtp import server_connection

        self.patch(server_connection, "STORAGE_DEADLINE", 0.5)
        harness = await self.start()
        never: list = []

        async def stuck(*args: object, **kwargs: object) -> list:
            d = defer.Deferred()
            never.append(d)
            return await d

        harness.service.submission.submit = stuck

        def scenario() -> list:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(BODY + b".\r\n")
            return [client.reply(), client.command(b"NOOP")]

        (late, noop) = await deferToThread(scenario)
        self.assertEqual(late[0], 451)
        self.assertEqual(noop[0], 250)
        never[0].callback(["id-that-came-too-late"])  # ignored: the client already heard 451

    async def test_header_rules(self) -> None:
        harness = await self.start()

        def send(header: bytes) -> tuple:
            client = RawClient.ready_for_data(harness.smtp_port)
            client.send(header + b"\r\nbody\r\n.\r\n")
            return client.reply()

        # A second From in obsolete syntax ("From :") is still a second From.
        code, lines = await deferToThread(send, b"From: <app@example.com>\r\nFrom : <ceo@bank.example>\r\n")
        self.assertEqual(code, 550)
        self.assertIn("more than one From", lines[0])
        code, _ = await deferToThread(send, b"From : <ceo@bank.example>\r\n")
        self.assertEqual(code, 550)
        code, lines = await deferToThread(send, b"From: <app@example.com>\r\n" + b"X-Big: y\r\n" * 30000)
        self.assertEqual(code, 552)
        code, _ = await deferToThread(send, b"From: " + b"(" * 5000 + b"\r\n")
        self.assertEqual(code, 550)
        self.assertEqual(await self.queued(harness), [])

    async def test_self_signed_certificate_is_made_once(self) -> None:
        harness = await self.start()
        cert = harness.data_dir / "tls" / "selfsigned.crt"
        first = cert.read_bytes()
        await harness.stop_async()
        await Harness.start(harness)
        self.assertEqual(cert.read_bytes(), first)
        self.assertEqual(oct((harness.data_dir / "tls" / "selfsigned.key").stat().st_mode & 0o777), "0o600")
        self.assertTrue(json.dumps(str(cert)))
