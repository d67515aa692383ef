"""The recording SMTP sink the delivery tests deliver to, checked over real loopback sockets."""

from __future__ import annotations

import smtplib
import ssl

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support.harness import RawClient
from tests.support.sink import Behaviour, RecordingSink, free_port_on

BODY = b"Subject: hi\r\n\r\nHello.\r\n"


class SinkTests(unittest.TestCase):
    async def started(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1",
                      port: int = 0) -> RecordingSink:
        sink = RecordingSink(behaviour, host=host, port=port)
        await sink.start()
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(sink.stop()))
        return sink

    async def test_transaction_is_recorded_with_parameters(self) -> None:
        sink = await self.started()

        def client() -> dict:
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as smtp:
                return smtp.sendmail("app@example.com", ["a@example.net", "b@example.net"], BODY,
                                     mail_options=["BODY=8BITMIME", "SMTPUTF8", "ENVID=abc"],
                                     rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;x@y"])

        self.assertEqual(await deferToThread(client), {})
        await sink.wait_for(1)
        [got] = sink.received
        self.assertEqual(got.helo, "client.test")
        self.assertEqual(got.mail_from, "app@example.com")
        self.assertEqual(got.mail_params["BODY"], "8BITMIME")
        self.assertEqual(got.mail_params["ENVID"], "abc")
        self.assertIsNone(got.mail_params["SMTPUTF8"])
        self.assertEqual(got.mail_params["SIZE"], str(len(BODY)))
        self.assertEqual(got.recipients, ["a@example.net", "b@example.net"])
        self.assertEqual(got.rcpt_params["b@example.net"], {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;x@y"})
        self.assertEqual(got.data, BODY)
        self.assertEqual(got.raw_data, BODY + b".\r\n")
        self.assertFalse(got.tls)
        self.assertEqual((got.connection, got.peer), (1, "127.0.0.1"))
        self.assertEqual(sink.attempts, [got])
        self.assertEqual([c.split()[0] for c in sink.commands],
                         ["ehlo", "mail", "rcpt", "rcpt", "data", "QUIT"])
        self.assertEqual((sink.connections_total, sink.connections_open), (1, 0))

    async def test_pipelined_commands_answered_in_order(self) -> None:
        sink = await self.started()

        def client() -> list[int]:
            raw = RawClient(sink.port)
            codes = [raw.reply()[0], raw.command(b"EHLO client.test")[0]]
            raw.send(b"MAIL FROM:<> RET=HDRS\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
                     b"x\r\n.\r\nNOOP\r\nRSET\r\nQUIT\r\n")
            codes += [raw.reply()[0] for _ in range(8)]
            raw.close()
            return codes

        self.assertEqual(await deferToThread(client), [220, 250, 250, 250, 250, 354, 250, 250, 250, 221])
        [got] = sink.received
        self.assertEqual((got.mail_from, got.mail_params), ("", {"RET": "HDRS"}))
        self.assertEqual(got.data, b"x\r\n")
        self.assertEqual(sink.commands[-3:], ["NOOP", "RSET", "QUIT"])

    async def test_dot_unstuffing_and_raw_data(self) -> None:
        sink = await self.started()
        raw_body = b"..leading\r\n..\r\nbare\nlf and bare\rcr\r\n...\r\nend\r\n.\r\n"

        def client() -> int:
            raw = RawClient(sink.port)
            raw.reply()
            for line in (b"HELO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
                raw.command(line)
            raw.send(raw_body[:7])  # the end marker straddles writes too
            raw.send(raw_body[7:-3])
            raw.send(raw_body[-3:])
            code = raw.reply()[0]
            raw.close()
            return code

        self.assertEqual(await deferToThread(client), 250)
        [got] = sink.received
        self.assertEqual(got.raw_data, raw_body)
        self.assertEqual(got.data, b".leading\r\n.\r\nbare\nlf and bare\rcr\r\n..\r\nend\r\n")
        self.assertEqual(got.helo, "c.test")

    async def test_greylisting_then_accept_and_rcpt_reply(self) -> None:
        refuse = {"gone@x.test": (550, "5.1.1 no such user")}
        sink = await self.started(Behaviour(greylist=True,
                                            rcpt_reply=lambda r: refuse.get(r, (250, "2.1.5 ok"))))

        def send(recipients: list[str]) -> object:
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
                try:
                    return smtp.sendmail("a@x.test", recipients, BODY)
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients

        first = await deferToThread(send, ["ok@x.test", "gone@x.test"])
        self.assertEqual({k: v[0] for k, v in first.items()}, {"ok@x.test": 451, "gone@x.test": 451})
        second = await deferToThread(send, ["ok@x.test", "gone@x.test"])
        self.assertEqual(second, {"gone@x.test": (550, b"5.1.1 no such user")})
        [got] = sink.received
        self.assertEqual((got.recipients, got.connection), (["ok@x.test"], 2))
        self.assertEqual(sink.connections_total, 2)

    async def test_starttls_session_is_flagged(self) -> None:
        sink = await self.started(Behaviour(starttls=True))

        def client() -> tuple[bool, bool]:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
                smtp.ehlo()
                offered = smtp.has_extn("starttls")
                smtp.starttls(context=context)
                smtp.ehlo()
                smtp.sendmail("a@x.test", ["b@x.test"], BODY)
                return offered, smtp.has_extn("starttls")

        self.assertEqual(await deferToThread(client), (True, False))
        [got] = sink.received
        self.assertTrue(got.tls)
        self.assertEqual(got.data, BODY)

    async def test_mail_before_ehlo_after_starttls_is_refused(self) -> None:
        sink = await self.started(Behaviour(starttls=True))

        def client() -> list[int]:
            raw = RawClient(sink.port)
            raw.reply()
            raw.command(b"EHLO c.test")
            raw.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
            assert raw.reply()[0] == 220
            raw.sock = raw._tls(raw.sock)
            codes = [raw.command(b"MAIL FROM:<a@x.test>")[0], raw.command(b"EHLO c.test")[0],
                     raw.command(b"MAIL FROM:<a@x.test>")[0], raw.command(b"BOGUS")[0]]
            raw.close()
            return codes

        self.assertEqual(await deferToThread(client), [503, 250, 250, 500])

    async def test_helo_fallback_and_refused_data_is_only_an_attempt(self) -> None:
        sink = await self.started(Behaviour(ehlo_reply=(502, "5.5.1 not implemented"),
                                            mail_reply=lambda s: (553, "5.7.1 no") if s == "bad@x.test"
                                            else (250, "2.1.0 ok"),
                                            data_reply=lambda r: (554, "5.7.1 spam") if b"spam" in r.data
                                            else (250, "2.0.0 ok")))

        def client() -> list[object]:
            results: list[object] = []
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="c.test", timeout=5) as smtp:
                for sender, body in (("bad@x.test", BODY), ("a@x.test", b"spam\r\n"), ("a@x.test", BODY)):
                    try:
                        results.append(smtp.sendmail(sender, ["b@x.test"], body))
                    except smtplib.SMTPResponseException as e:
                        results.append(e.smtp_code)
                        smtp.rset()
            return results

        self.assertEqual(await deferToThread(client), [553, 554, {}])
        self.assertEqual([c.split()[0].upper() for c in sink.commands[:2]], ["EHLO", "HELO"])
        self.assertEqual([a.data for a in sink.attempts], [b"spam\r\n", BODY])
        self.assertEqual([r.data for r in sink.received], [BODY])
        self.assertEqual(sink.received[0].helo, "c.test")

    async def test_stall_makes_the_client_time_out(self) -> None:
        sink = await self.started(Behaviour(stall_at="rcpt"))

        def client() -> str:
            smtp = smtplib.SMTP("127.0.0.1", sink.port, timeout=0.3)
            smtp.ehlo()
            smtp.mail("a@x.test")
            try:
                smtp.rcpt("b@x.test")
            except smtplib.SMTPServerDisconnected as e:  # smtplib reports its read timeout this way
                return "timeout" if "timed out" in str(e) else str(e)
            finally:
                smtp.close()
            return "answered"

        self.assertEqual(await deferToThread(client), "timeout")
        self.assertEqual(sink.received, [])

    async def test_wait_for_times_out(self) -> None:
        sink = await self.started()
        with self.assertRaises(TimeoutError):
            await sink.wait_for(1, timeout=0.05)

    async def test_drop_after_data_bytes_closes_the_connection(self) -> None:
        sink = await self.started(Behaviour(drop_after_data_bytes=100))

        def send(body: bytes) -> str:
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
                try:
                    smtp.sendmail("a@x.test", ["b@x.test"], body)
                except (smtplib.SMTPServerDisconnected, ConnectionError):
                    return "dropped"
                return "sent"

        self.assertEqual(await deferToThread(send, BODY), "sent")
        self.assertEqual(await deferToThread(send, b"x" * 5000 + b"\r\n"), "dropped")
        self.assertEqual((len(sink.received), len(sink.attempts)), (1, 1))

    async def test_max_concurrent_and_refused_connections(self) -> None:
        sink = await self.started(Behaviour(max_connections=2))

        def client() -> int:
            first = smtplib.SMTP("127.0.0.1", sink.port, timeout=5)
            second = smtplib.SMTP("127.0.0.1", sink.port, timeout=5)
            try:
                smtplib.SMTP("127.0.0.1", sink.port, timeout=5)
            except smtplib.SMTPConnectError as e:
                refused = e.smtp_code
            else:
                refused = 0
            first.quit()
            second.quit()
            return refused

        self.assertEqual(await deferToThread(client), 421)
        self.assertEqual((sink.max_concurrent, sink.connections_total, sink.refused_connections), (2, 2, 1))

    async def test_free_port_shared_by_two_loopback_addresses(self) -> None:
        port = free_port_on("127.0.0.2", "127.0.0.3")
        sinks = [await self.started(host=host, port=port) for host in ("127.0.0.2", "127.0.0.3")]

        def client(host: str) -> None:
            with smtplib.SMTP(host, port, timeout=5) as smtp:
                smtp.sendmail("a@x.test", [f"b@{host}"], BODY)

        for sink in sinks:
            self.assertEqual(sink.port, port)
            await deferToThread(client, sink.host)
        self.assertEqual([s.received[0].recipients for s in sinks], [["b@127.0.0.2"], ["b@127.0.0.3"]])

    async def test_stop_closes_open_connections(self) -> None:
        sink = RecordingSink()
        await sink.start()
        raw = await deferToThread(RawClient, sink.port)
        await deferToThread(raw.reply)
        await sink.stop()
        self.assertTrue(await deferToThread(raw.closed_by_server))
        raw.close()
        self.assertEqual(sink.connections_open, 0)
