"""An account sends only as itself: envelope sender, From, Sender, Resent-*, display names.

Over SMTP (an authenticated login) and the REST API alike, through real sockets.
"""

from __future__ import annotations

import email
import email.policy

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support.harness import Harness, Login, RawClient, auth_plain
from tests.support.http import Client


def authenticated(port: int, login: Login) -> RawClient:
    client = RawClient.greeted(port)
    client.starttls()
    client.command(b"EHLO client.test")
    code, lines = client.command(auth_plain(login.username, login.password))
    assert code == 235, lines
    return client


class SenderIdentityTests(unittest.TestCase):
    async def start(self, **smtp: object) -> Harness:
        self.harness = Harness(self, smtp=smtp)
        self.acme = await self.harness.login("acme", domains=("acme.test",))
        await self.harness.login("other", domains=("other.test",))  # another tenant's domain
        return await self.harness.start()

    async def submit(self, header: bytes, mail_from: bytes = b"news@acme.test") -> tuple[int, list[str]]:
        def scenario() -> tuple[int, list[str]]:
            client = authenticated(self.harness.smtp_port, self.acme)
            for line in (b"MAIL FROM:<" + mail_from + b">", b"RCPT TO:<someone@example.net>", b"DATA"):
                client.command(line)
            client.send(header + b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            answer = client.reply()
            client.close()
            return answer

        return await deferToThread(scenario)

    async def assert_refused(self, header: bytes, mail_from: bytes = b"news@acme.test",
                             status: str = "5.7.1", says: str = "") -> None:
        code, lines = await self.submit(header, mail_from)
        self.assertEqual(code, 550, (header, lines))
        self.assertIn(status, lines[0])
        self.assertIn(says, lines[0])

    async def test_the_envelope_sender_must_be_the_accounts(self) -> None:
        await self.start()
        own_from = b"From: news@acme.test\r\n"
        await self.assert_refused(own_from, b"ceo@other.test", says="MAIL FROM <ceo@other.test>")
        await self.assert_refused(own_from, b"ceo@OTHER.test", says="other.test")
        self.assertEqual(await self.harness.storage.queue(state=None, limit=10), [])
        code, lines = await self.submit(b"From: news@acme.test\r\n", b"")  # the null sender is fine
        self.assertEqual(code, 250, lines)
        code, lines = await self.submit(b"From: news@acme.test\r\n", b"bounces@ACME.test")
        self.assertEqual(code, 250, lines)

    async def test_sender_and_resent_fields_must_be_the_accounts(self) -> None:
        await self.start()
        await self.assert_refused(b"From: news@acme.test\r\nSender: ceo@other.test\r\n", says="Sender")
        await self.assert_refused(b"From: news@acme.test\r\nResent-From: ceo@other.test\r\n",
                                  says="Resent-From")
        await self.assert_refused(b"From: news@acme.test\r\nResent-Sender: <ceo@other.test>\r\n",
                                  says="Resent-Sender")
        await self.assert_refused(b"From: news@acme.test\r\nSender: a@acme.test\r\nSender: b@acme.test\r\n",
                                  status="5.6.0", says="more than one Sender")
        code, lines = await self.submit(b"From: news@acme.test\r\nSender: desk@acme.test\r\n"
                                        b"Resent-From: a@acme.test\r\nResent-From: b@acme.test\r\n")
        self.assertEqual(code, 250, lines)

    async def test_display_names_may_not_show_a_foreign_address(self) -> None:
        await self.start()
        for display in (b'"ceo@other.test"', b"=?utf-8?q?ceo=40other=2Etest?=",  # the same, encoded
                        "ceo\uff20other.test".encode()):  # a full-width at sign reads the same
            await self.assert_refused(b"From: " + display + b" <news@acme.test>\r\n", says="display name")
        # Not even a valid display name: whatever a receiver makes of it, it is refused.
        await self.assert_refused(b"From: ceo@other.test via acme <news@acme.test>\r\n")
        await self.assert_refused(b"From: news@acme.test\r\nSender: \"x@other.test\" <a@acme.test>\r\n",
                                  says="display name")
        code, lines = await self.submit(b'From: "news@acme.test" <news@acme.test>\r\n')
        self.assertEqual(code, 250, lines)  # its own address in a display name is fine
        code, lines = await self.submit(b"From: Acme News <news@acme.test>\r\n")
        self.assertEqual(code, 250, lines)

    async def test_display_names_may_be_allowed_by_the_operator(self) -> None:
        await self.start(allow_foreign_display_name_addresses=True)
        code, lines = await self.submit(b'From: "ceo@other.test" <news@acme.test>\r\n')
        self.assertEqual(code, 250, lines)
        await self.assert_refused(b"From: ceo@other.test\r\n")  # the address itself still counts

    async def test_a_header_that_ends_without_an_empty_line_ends_for_everyone(self) -> None:
        """A receiver reading on past a line that is no header field would see a second From."""
        await self.start()
        for broken in (b"X-Notes\r\n", b"X-Not a name: x\r\n", "X-N\u00e9: y\r\n".encode()):
            code, lines = await self.submit(
                b"From: news@acme.test\r\n" + broken + b"From: ceo@other.test\r\n")
            self.assertEqual(code, 250, lines)
        entries = await self.harness.storage.queue(state=None, limit=10)
        for entry in entries:
            mime = (await self.harness.storage.message_content(entry.id)).mime
            parsed = email.message_from_bytes(mime, policy=email.policy.default)
            self.assertEqual(parsed.get_all("From"), ["news@acme.test"], mime)
            self.assertIn(b"\r\n\r\nX-N", mime)

    async def test_header_lines_that_cannot_be_folded_are_refused(self) -> None:
        await self.start()
        code, lines = await self.submit(b"From: news@acme.test\r\nX-Long: " + b"x" * 1000 + b"\r\n")
        self.assertEqual(code, 550, lines)
        self.assertIn("5.6.0", lines[0])
        self.assertIn("998", lines[0])
        code, lines = await self.submit(b"From: news@acme.test\r\nX-Long: " + b"word " * 400 + b"\r\n")
        self.assertEqual(code, 250, lines)  # long, but it folds

    async def test_rest_api_follows_the_same_rules(self) -> None:
        await self.start()
        api = Client(self.harness.http_url, self.acme.token)
        fields = {"recipient": "someone@example.net", "from": "news@acme.test", "subject": "hi", "text": "x"}
        refused = await api.post("/v1/send", json_body={**fields, "envelope": "ceo@other.test"})
        self.assertEqual(refused.code, 403, refused.body)
        self.assertIn("MAIL FROM <ceo@other.test>", refused.error)
        shown = '"ceo@other.test" <news@acme.test>'
        refused = await api.post("/v1/send", json_body={**fields, "from": shown})
        self.assertEqual(refused.code, 403, refused.body)
        self.assertIn("display name", refused.error)
        mime = "From: news@acme.test\r\nSubject: " + "x" * 1200 + "\r\n\r\nbody\r\n"
        refused = await api.post("/v1/send", json_body={"recipient": "someone@example.net", "mime": mime})
        self.assertEqual(refused.code, 400, refused.body)
        self.assertIn("998", refused.error)
        accepted = await api.post("/v1/send", json_body={**fields, "envelope": "bounce@acme.test"})
        self.assertEqual(accepted.code, 200, accepted.body)
