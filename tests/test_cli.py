"""The ``smtpeter`` admin command, run as a user runs it (a separate process)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from smtpeter import credentials
from smtpeter.storage import open_storage
from smtpeter.storage.models import NewMessage, NewRecipient

SMTPETER = str(Path(sys.executable).parent / "smtpeter")


class CLITests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtpeter-cli-"))
        self.config = self.directory / "smtpeter.toml"
        self.config.write_text(f'[server]\ndata_dir = "{self.directory / "data"}"\n')

    async def run_cli(self, *args: str) -> tuple[int, str, str]:
        out, err, code = await utils.getProcessOutputAndValue(
            SMTPETER, ["--config", str(self.config), *args], env={}
        )
        return code, out.decode(), err.decode()

    async def test_account_create_prints_credentials_that_work(self) -> None:
        code, out, err = await self.run_cli("account", "create", "acme", "--json", "--trackclicks")
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        self.assertEqual(set(created) >= {"account", "api_token", "smtp_username", "smtp_password"}, True)
        self.assertEqual((created["account"], created["smtp_username"]), ("acme", "acme"))
        storage = await open_storage(f"sqlite:///{self.directory / 'data' / 'smtpeter.sqlite3'}", reactor)
        try:
            login = await storage.smtp_login("acme")
            self.assertTrue(credentials.verify_password(created["smtp_password"], login.password_hash))
            self.assertEqual(login.options, {"trackclicks": True})
            self.assertEqual(await storage.account_for_token(created["api_token"]), login.account_id)
        finally:
            await storage.close()
        code, out, err = await self.run_cli("account", "create", "acme", "--json")
        self.assertEqual(code, 1)
        self.assertIn("already exists", json.loads(out)["error"]["message"])

    async def test_tokens(self) -> None:
        await self.run_cli("account", "create", "acme")
        code, out, err = await self.run_cli("token", "create", "acme", "--description", "ci", "--json")
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        code, out, err = await self.run_cli("token", "list", "acme", "--json")
        tokens = json.loads(out)
        self.assertEqual(len(tokens), 2)
        self.assertNotIn(created["api_token"], out)  # secrets are never shown again
        code, out, err = await self.run_cli("token", "revoke", "acme", created["token_id"], "--json")
        self.assertEqual(code, 0, err)
        code, out, err = await self.run_cli("token", "list", "acme", "--json")
        revoked = [t for t in json.loads(out) if t["token_id"] == created["token_id"]]
        self.assertTrue(revoked[0]["revoked"])
        code, _, err = await self.run_cli("token", "revoke", "acme", created["token_id"])
        self.assertEqual(code, 1)
        self.assertIn("no active token", err)

    async def test_domains(self) -> None:
        await self.run_cli("account", "create", "acme")
        code, out, err = await self.run_cli("domain", "add", "acme", "News.Example.com", "--json")
        self.assertEqual(code, 0, err)
        added = json.loads(out)
        self.assertEqual((added["domain"], added["approved"]), ("news.example.com", False))
        (record,) = added["dns"]
        self.assertEqual(record["type"], "TXT")
        self.assertTrue(record["name"].endswith(".news.example.com"))
        code, out, err = await self.run_cli("domain", "approve", "acme", "news.example.com")
        self.assertEqual(code, 0, err)
        code, out, err = await self.run_cli("domain", "list", "acme", "--json")
        self.assertEqual(json.loads(out), [{"domain": "news.example.com", "approved": True}])
        code, out, err = await self.run_cli("domain", "add", "nobody", "x.example")
        self.assertEqual(code, 1)
        self.assertIn("no account 'nobody'", err)

    async def test_queue_list_show_delete(self) -> None:
        storage = await open_storage(f"sqlite:///{self.directory / 'data' / 'smtpeter.sqlite3'}", reactor)
        try:
            account = await storage.create_account("acme")
            ids = await storage.enqueue(NewMessage(
                account.id, "smtp", "a@example.com", b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n",
                [NewRecipient("x@example.net"), NewRecipient("y@example.net")], tags=["t1"]))
        finally:
            await storage.close()
        code, out, err = await self.run_cli("queue", "list", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(e["id"] for e in json.loads(out)), sorted(ids))
        code, out, err = await self.run_cli("queue", "show", ids[0], "--json")
        shown = json.loads(out)
        self.assertEqual((shown["recipient"], shown["tags"]), ("x@example.net", ["t1"]))
        self.assertIn("Subject: s", shown["headers"])
        self.assertEqual([e["type"] for e in shown["events"]], ["attempt"])
        code, out, err = await self.run_cli("queue", "show", ids[0])
        self.assertIn("recipient: x@example.net", out)
        code, out, err = await self.run_cli("queue", "retry", "all", "--json")
        self.assertEqual(json.loads(out), {"due_now": 2})
        code, out, err = await self.run_cli("queue", "retry", "nonexistent")
        self.assertEqual(code, 1)
        code, out, err = await self.run_cli("events", "list", "acme", "--json")
        self.assertEqual(sorted(e["id"] for e in json.loads(out)), sorted(ids))
        self.assertEqual({e["type"] for e in json.loads(out)}, {"attempt"})
        code, out, err = await self.run_cli("events", "list", "acme", "--type", "delivery", "--json")
        self.assertEqual(json.loads(out), [])
        code, out, err = await self.run_cli("events", "list", "acme", "--since", "yesterday")
        self.assertEqual(code, 1)
        code, _, err = await self.run_cli("queue", "delete", ids[0])
        self.assertEqual(code, 0, err)
        code, out, err = await self.run_cli("queue", "list", "--json")
        self.assertEqual([e["id"] for e in json.loads(out)], [ids[1]])
        code, _, err = await self.run_cli("queue", "delete", ids[0])
        self.assertEqual(code, 1)
        self.assertIn("no message", err)

    async def test_bad_configuration_is_a_clear_error(self) -> None:
        self.config.write_text('[smtp]\ntrusted_network = ["10.0.0.0/8"]\n')
        code, _, err = await self.run_cli("account", "list")
        self.assertEqual(code, 2)
        self.assertIn("unknown key 'trusted_network' in [smtp]", err)

    @defer.inlineCallbacks
    def test_usage_error(self) -> defer.Deferred:
        _, err, code = yield utils.getProcessOutputAndValue(SMTPETER, ["account"], env={})
        self.assertEqual(code, 2)
        self.assertIn(b"usage:", err)
