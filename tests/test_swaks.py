"""The real swaks client against a running server: what a desktop client or app would do."""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.harness import Harness, Login


class SwaksTests(unittest.TestCase):
    backend = "sqlite"

    async def start(self, **smtp: object) -> Harness:
        self.harness = Harness(self, self.backend, smtp=smtp)
        self.login: Login = await self.harness.login("acme", domains=("acme.test",))
        return await self.harness.start()

    async def queued(self) -> list:
        return await self.harness.storage.queue(state=None)

    async def swaks_as(self, *args: str, port: int | None = None, auth: str = "PLAIN") -> tuple[int, str]:
        return await self.harness.swaks(
            "--tls", "--auth", auth, "--auth-user", self.login.username,
            "--auth-password", self.login.password, "--from", "me@acme.test",
            "--h-From", '"Me" <me@acme.test>', "--to", "someone@example.net", *args, port=port,
        )

    async def test_starttls_auth_plain(self) -> None:
        await self.start()
        code, out = await self.swaks_as(auth="PLAIN")
        self.assertEqual(code, 0, out)
        self.assertIn("235 2.7.0 Authentication successful", out)
        (entry,) = await self.queued()
        self.assertIn(f"250 2.0.0 {entry.id} for someone@example.net", out)
        self.assertEqual(entry.envelope, "me@acme.test")

    async def test_starttls_auth_login(self) -> None:
        await self.start()
        code, out = await self.swaks_as(auth="LOGIN")
        self.assertEqual(code, 0, out)
        self.assertIn("334 VXNlcm5hbWU6", out)
        self.assertEqual(len(await self.queued()), 1)

    async def test_implicit_tls_listener(self) -> None:
        await self.start()
        code, out = await self.harness.swaks(
            "--tls-on-connect", "--auth", "PLAIN", "--auth-user", self.login.username,
            "--auth-password", self.login.password, "--from", "me@acme.test", "--h-From", "me@acme.test",
            "--to", "someone@example.net", port=self.harness.smtps_port,
        )
        self.assertEqual(code, 0, out)
        self.assertEqual(len(await self.queued()), 1)

    async def test_auth_is_not_offered_before_tls(self) -> None:
        await self.start()
        code, out = await self.harness.swaks(
            "--auth", "PLAIN", "--auth-user", self.login.username, "--auth-password", self.login.password,
            "--from", "me@acme.test", "--to", "someone@example.net",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("250 STARTTLS", out)
        self.assertNotIn("AUTH PLAIN LOGIN", out)
        self.assertEqual(await self.queued(), [])

    async def test_wrong_password(self) -> None:
        await self.start()
        code, out = await self.harness.swaks(
            "--tls", "--auth", "PLAIN", "--auth-user", self.login.username, "--auth-password", "wrong",
            "--from", "me@acme.test", "--to", "someone@example.net",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("535 5.7.8", out)
        self.assertEqual(await self.queued(), [])

    async def test_unauthenticated_relay_is_refused(self) -> None:
        await self.start()
        code, out = await self.harness.swaks("--tls", "--from", "me@acme.test", "--to", "someone@example.net")
        self.assertNotEqual(code, 0)
        self.assertIn("530 5.7.0 Authentication required", out)
        self.assertEqual(await self.queued(), [])

    async def test_from_of_a_foreign_domain_is_refused(self) -> None:
        await self.start()
        code, out = await self.harness.swaks(
            "--tls", "--auth", "PLAIN", "--auth-user", self.login.username,
            "--auth-password", self.login.password, "--from", "me@acme.test",
            "--h-From", "ceo@bank.example", "--to", "someone@example.net",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("550 5.7.1 From <ceo@bank.example>: bank.example is not an approved sender domain", out)
        self.assertEqual(await self.queued(), [])

    async def test_pipelining(self) -> None:
        await self.start()
        code, out = await self.swaks_as("--pipeline", "--to", "a@example.net,b@example.net")
        self.assertEqual(code, 0, out)
        self.assertIn("250-PIPELINING", out)
        self.assertEqual(sorted(e.address for e in await self.queued()), ["a@example.net", "b@example.net"])

    async def test_size_limit(self) -> None:
        await self.start(max_message_size=4096)
        code, out = await self.swaks_as("--body", "z" * 900 + "\n" + "z" * 900 + "\n" + "z" * 3000)
        self.assertNotEqual(code, 0)
        self.assertIn("250-SIZE 4096", out)
        self.assertIn("552 5.3.4", out)
        self.assertEqual(await self.queued(), [])

    async def test_8bit_body_is_kept_byte_for_byte(self) -> None:
        await self.start()
        code, out = await self.swaks_as("--body", "Grüße aus Köln · ½ €", "--h-Subject", "8bit")
        self.assertEqual(code, 0, out)
        self.assertIn("250-8BITMIME", out)
        (entry,) = await self.queued()
        mime = (await self.harness.storage.message_content(entry.id)).mime
        self.assertIn("Grüße aus Köln · ½ €".encode(), mime)

    async def test_utf8_address_needs_smtputf8(self) -> None:
        await self.start()
        code, out = await self.swaks_as("--to", "jörg@example.net")
        self.assertNotEqual(code, 0)
        self.assertIn("250-SMTPUTF8", out)
        self.assertIn("553 5.6.7", out)


class SwaksOnPostgreSQL(unittest.TestCase):
    async def test_submission_on_postgresql(self) -> None:
        harness = Harness(self, "postgresql")
        login = await harness.login("acme", domains=("acme.test",))
        await harness.start()
        code, out = await harness.swaks(
            "--tls", "--auth", "LOGIN", "--auth-user", login.username, "--auth-password", login.password,
            "--from", "me@acme.test", "--h-From", "me@acme.test", "--to", "a@example.net,b@example.net",
        )
        self.assertEqual(code, 0, out)
        queued = await harness.storage.queue()
        self.assertEqual(len(queued), 2)
        self.assertEqual(len({q.message_id for q in queued}), 1)
