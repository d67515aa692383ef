"""The ``smtpeter`` admin command, run as a user runs it (a separate process)."""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from smtpeter import credentials
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.events.model import accept
from smtpeter.storage import Storage, open_storage
from smtpeter.storage.models import NewMessage, Outcome
from tests.support.dns_server import TestDNSServer

SMTPETER = str(Path(sys.executable).parent / "smtpeter")


class CLITests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smtpeter-cli-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.config = self.directory / "smtpeter.toml"
        self.config.write_text(f'[server]\ndata_dir = "{self.directory / "data"}"\n')

    async def run_cli(self, *args: str, cwd: Path | None = None, config: str = "") -> tuple[int, str, str]:
        out, err, code = await utils.getProcessOutputAndValue(
            SMTPETER, ["--config", config or str(self.config), *args], env={}, path=str(cwd or self.directory)
        )
        return code, out.decode(), err.decode()

    async def storage(self) -> Storage:
        storage = await open_storage(f"sqlite:///{self.directory / 'data' / 'smtpeter.sqlite3'}", reactor)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(storage.close()))
        return storage

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
            self.assertEqual(login.options, MessageOptions(trackclicks=True))
            self.assertEqual(await storage.account_for_token(created["api_token"]), login.account_id)
        finally:
            await storage.close()
        code, out, err = await self.run_cli("account", "create", "acme", "--json")
        self.assertEqual(code, 1)
        # The REST API's shape: {"error": "text"}.
        self.assertIn("already exists", json.loads(out)["error"])

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
        dns = await TestDNSServer().start()  # the live check asks it, never the network
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(dns.stop()))
        self.config.write_text(self.config.read_text() + f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\n')
        await self.run_cli("account", "create", "acme")
        code, out, err = await self.run_cli("domain", "add", "acme", "News.Example.com", "--json")
        self.assertEqual(code, 0, err)
        added = json.loads(out)
        self.assertEqual((added["domain"], added["approved"]), ("news.example.com", False))
        record = added["dns"][0]  # the ownership record first, then what to publish for sending
        self.assertEqual(record["type"], "TXT")
        self.assertTrue(record["name"].startswith("smtpeter-"))
        self.assertTrue(record["name"].endswith(".news.example.com"))
        names = {(r["name"], r["type"]) for r in added["dns"]}
        self.assertLessEqual({("zero._domainkey.news.example.com", "TXT"), ("_dmarc.news.example.com", "TXT"),
                              ("bounces.news.example.com", "MX")}, names)
        code, out, err = await self.run_cli("domain", "check", "news.example.com", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["dkim"], "error")  # nothing is published
        dns.txt(record["name"], record["value"])
        code, out, err = await self.run_cli("domain", "check", "news.example.com")
        self.assertEqual(code, 0, err)
        self.assertIn("validation ok", out)
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
            ids = await storage.enqueue(accept(NewMessage(
                account.id, "smtp",
                Envelope("a@example.com", (Recipient("x@example.net"), Recipient("y@example.net"))),
                b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n", tags=["t1"])))
        finally:
            await storage.close()
        code, out, err = await self.run_cli("queue", "list", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(e["id"] for e in json.loads(out)), sorted(ids))
        code, out, err = await self.run_cli("queue", "list", "--limit", "1")
        self.assertEqual(sum(i in out for i in ids), 1)
        self.assertIn("(the newest 1: --limit N shows more", out)
        code, out, err = await self.run_cli("queue", "show", ids[0], "--json")
        shown = json.loads(out)
        self.assertEqual((shown["recipient"], shown["tags"]), ("x@example.net", ["t1"]))
        self.assertIn("Subject: s", shown["headers"])
        self.assertEqual([e["event"] for e in shown["events"]], ["attempt"])
        code, out, err = await self.run_cli("queue", "show", ids[0])
        self.assertIn("recipient:    x@example.net", out)
        code, out, err = await self.run_cli("queue", "retry", "all", "--json")
        self.assertEqual(json.loads(out), {"due_now": 2})
        code, out, err = await self.run_cli("queue", "retry", "nonexistent")
        self.assertEqual(code, 1)
        code, out, err = await self.run_cli("events", "list", "acme", "--json")
        self.assertEqual(sorted(e["id"] for e in json.loads(out)), sorted(ids))
        self.assertEqual({e["event"] for e in json.loads(out)}, {"attempt"})
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

    async def test_queue_reads_as_text_after_attempts(self) -> None:
        storage = await self.storage()
        account = await storage.create_account("acme")
        delivered, deferred, failed = [(await storage.enqueue(accept(NewMessage(
            account.id, "api", Envelope("news@example.com", (Recipient(f"{name}@example.net"),)),
            b"From: news@example.com\r\nSubject: s\r\n\r\nbody\r\n",
            MessageOptions(trackclicks=True, inlinecss=False)))))[0]
            for name in ("delivered", "deferred", "failed")]
        leases = {lease.id: lease for lease in await storage.claim("cli-test", 10, 60)}
        now = storage.now()
        retry = now + 600

        def outcome(rid: str, state: str, event_type: str, code: int, status: str, text: str,
                    **event: object) -> Outcome:
            address = leases[rid].address
            data = {"recipient": address, "mx": "mx.example.net", "to": "192.0.2.1", "code": code,
                    "status": status, "description": text, **event}
            return Outcome(rid, account.id, address, state, 1, retry if state == "queued" else now,
                           event_type, data, code, status, text, "rcpt")

        await storage.record("cli-test", [
            outcome(delivered, "delivered", "delivery", 250, "2.0.0", "Ok"),
            outcome(deferred, "queued", "deferred", 451, "4.7.1", "Try again later", retry=retry),
            outcome(failed, "failed", "failure", 550, "5.1.1", "No such user", type="failed"),
        ])

        # By default every state shows, as a table with a header.
        code, out, err = await self.run_cli("queue", "list")
        self.assertEqual(code, 0, err)
        header, *rows = out.splitlines()
        self.assertEqual(header.split()[:3], ["ID", "CREATED", "STATE"])
        self.assertEqual({row.split()[0]: row.split()[2] for row in rows},
                         {delivered: "delivered", deferred: "queued", failed: "failed"})
        code, out, err = await self.run_cli("queue", "list", "--state", "queued", "--json")
        self.assertEqual([e["id"] for e in json.loads(out)], [deferred])

        code, out, err = await self.run_cli("queue", "show", deferred)
        self.assertEqual(code, 0, err)
        for python_repr in ("None", "True", "False", "{'", "['"):
            self.assertNotIn(python_repr, out)
        lines = [line.strip() for line in out.splitlines()]
        self.assertIn("options:      inlinecss=no trackclicks=yes", lines)
        self.assertIn("tags:         -", lines)
        iso = "%Y-%m-%dT%H:%M:%SZ"
        retry_text = datetime.datetime.fromtimestamp(retry, datetime.UTC).strftime(iso)
        self.assertIn(f"next attempt: {retry_text}", lines)
        (line,) = [line for line in lines if "deferred" in line.split()]
        self.assertTrue(line.endswith(
            f"mx.example.net [192.0.2.1]: 451 4.7.1 Try again later; next try {retry_text}"), line)
        datetime.datetime.strptime(line.split()[0], iso)
        code, out, err = await self.run_cli("queue", "show", failed)
        self.assertIn("next attempt: -", out)
        self.assertIn("failed, mx.example.net [192.0.2.1]: 550 5.1.1 No such user", out)

        # --json stays machine-readable: the same times, as strings, and the REST API's event names.
        code, out, err = await self.run_cli("queue", "show", deferred, "--json")
        shown = json.loads(out)
        self.assertEqual(shown["options"], {"trackclicks": True, "inlinecss": False})
        self.assertEqual(shown["next_attempt"], retry_text)
        self.assertEqual([(e["event"], e.get("retry")) for e in shown["events"]],
                         [("attempt", None), ("deferred", retry_text)])

    async def test_relative_paths_are_relative_to_the_config_file(self) -> None:
        self.config.write_text('[server]\ndata_dir = "data"\n')
        code, _, err = await self.run_cli("account", "create", "acme", config="smtpeter.toml")
        self.assertEqual(code, 0, err)
        elsewhere = Path(tempfile.mkdtemp(prefix="smtpeter-cwd-"))
        self.addCleanup(shutil.rmtree, elsewhere)
        code, out, err = await self.run_cli("account", "list", "--json", cwd=elsewhere)
        self.assertEqual(code, 0, err)
        self.assertEqual([a["account"] for a in json.loads(out)], ["acme"])
        self.assertTrue((self.directory / "data" / "smtpeter.sqlite3").exists())
        self.assertFalse((elsewhere / "data").exists())

    async def test_bad_configuration_is_a_clear_error(self) -> None:
        self.config.write_text('[smtp]\ntrusted_network = ["10.0.0.0/8"]\n')
        code, _, err = await self.run_cli("account", "list")
        self.assertEqual(code, 2)
        self.assertEqual(err, f"smtpeter: {self.config}: unknown key 'trusted_network' in [smtp]\n")
        code, out, _ = await self.run_cli("account", "list", "--json")
        self.assertEqual((code, json.loads(out)),
                         (2, {"error": f"{self.config}: unknown key 'trusted_network' in [smtp]"}))

    @defer.inlineCallbacks
    def test_usage_error(self) -> defer.Deferred:
        _, err, code = yield utils.getProcessOutputAndValue(SMTPETER, ["account"], env={})
        self.assertEqual(code, 2)
        self.assertIn(b"usage:", err)
