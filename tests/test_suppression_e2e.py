"""The suppression list and one-click unsubscribe end to end: a real smtpeter delivering to recording
sinks (127.0.0.x) over real sockets, the REST API over HTTP, and the CLI as a separate process
writing to the database the running service reads."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, utils
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from smtpeter.events.model import FAILURE, UNSUBSCRIBE
from tests.support.http import Client, Response
from tests.support.rig import Rig, message, sleep
from tests.support.sink import Behaviour, free_port_on
from tests.test_cli import SMTPETER

GONE = "Gone.User@dest.test"


class SuppressionEndToEndTests(unittest.TestCase):
    async def start(self) -> Rig:
        self.rcpts: list[str] = []  # every RCPT TO the sink was offered

        def rcpt(address: str) -> tuple[int, str]:
            self.rcpts.append(address)
            if address.lower() == GONE.lower():
                return 550, "5.1.1 <gone.user@dest.test>: Recipient address rejected: User unknown"
            return 250, "2.1.5 ok"

        self.http_port = free_port_on("127.0.0.1")
        self.public_url = f"http://127.0.0.1:{self.http_port}"
        rig = self.rig = Rig(self)
        self.sink = rig.sink("127.0.0.2", Behaviour(rcpt_reply=rcpt))
        await rig.start(sections={
            "http": {"listen": [f"tcp:{self.http_port}:interface=127.0.0.1"], "public_url": self.public_url}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.client = Client(self.public_url, rig.login.token)
        return rig

    async def suppressed(self, address: str, timeout: float = 10.0) -> dict[str, Any]:
        """The entry for ``address`` once the rules have made it (GET /v1/suppression/ADDRESS)."""
        deadline = reactor.seconds() + timeout
        while True:
            response = await self.client.get(f"/v1/suppression/{address}")
            if response.code == 200:
                return response.json
            self.assertEqual(response.code, 404, response.body)
            self.assertLess(reactor.seconds(), deadline, f"{address} was never suppressed")
            await sleep(0.1)

    async def assert_fails_suppressed(self, address: str, reason: str) -> None:
        """A new message to ``address`` fails at once, never offered to the sink."""
        offered = len(self.rcpts)
        (message_id,) = await self.rig.send(address, data=message("again"))
        entry = await self.rig.wait_for(message_id, "failed", timeout=5)
        self.assertEqual((entry.attempts, entry.last_code, entry.last_status), (0, 550, "5.7.1"))
        (failure,) = [e for e in await self.rig.events(message_id) if e.type == FAILURE]
        self.assertEqual((failure.data["type"], failure.data["code"], failure.data["status"]),
                         ("suppressed", 550, "5.7.1"))
        self.assertIn(f"suppression list ({reason} since", failure.data["description"])
        self.assertEqual(failure.data["state"], "suppression")
        await sleep(0.3)
        self.assertEqual(len(self.rcpts), offered, "the sink was offered the suppressed recipient")

    async def test_a_user_unknown_is_suppressed_and_not_tried_again(self) -> None:
        rig = await self.start()
        (first,) = await rig.send(GONE)
        entry = await rig.wait_for(first, "failed")
        self.assertEqual((entry.last_code, entry.last_status), (550, "5.1.1"))
        self.assertEqual(self.rcpts, [GONE])
        found = await self.suppressed("gone.user@DEST.test")
        self.assertEqual((found["address"], found["reason"], found["source"], found["expires"]),
                         (GONE, "userunknown", first, None))
        await self.assert_fails_suppressed("GONE.USER@dest.test", "userunknown")
        # Taken off the list, the address is tried again.
        response = await self.client.request("DELETE", f"/v1/suppression/{GONE}")
        self.assertEqual((response.code, response.json), (200, True))
        (third,) = await rig.send(GONE)
        await rig.wait_for(third, "failed")
        self.assertEqual(len(self.rcpts), 2)

    async def test_rest_list_add_export_remove(self) -> None:
        rig = await self.start()
        other = Client(self.public_url, (await rig.harness.login("other", domains=("other.example",))).token)
        response = await self.client.post("/v1/suppressions", json_body={
            "address": "Bob@Dest.TEST", "reason": "complaint", "expires": "2099-01-01 00:00:00"})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json["address"], "Bob@dest.test")
        self.assertEqual(response.json["expires"], "2099-01-01 00:00:00")
        response = await self.client.post("/v1/suppression", json_body={"type": "address",
                                                                        "value": "carol@dest.test"})
        self.assertEqual((response.code, response.json["reason"]), (200, "manual"))
        listed = await self.client.get("/v1/suppressions")
        self.assertEqual([e["address"] for e in listed.json], ["Bob@dest.test", "carol@dest.test"])
        paged = await self.client.get("/v1/suppressions?limit=1&after=bob@dest.test")
        self.assertEqual([e["address"] for e in paged.json], ["carol@dest.test"])
        for path in ("/v1/suppressions?format=csv", "/v1/suppressions/csv"):
            exported = await self.client.get(path)
            self.assertEqual(exported.code, 200)
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            self.assertEqual([(r["address"], r["reason"]) for r in rows],
                             [("Bob@dest.test", "complaint"), ("carol@dest.test", "manual")])
        # Another account sees none of it and cannot change it.
        self.assertEqual((await other.get("/v1/suppressions")).json, [])
        self.assertEqual((await other.get("/v1/suppression/bob@dest.test")).code, 404)
        self.assertEqual((await other.request("DELETE", "/v1/suppression/bob@dest.test")).code, 404)
        # Bad input changes nothing.
        for body in ({}, {"address": "not an address"}, {"address": "x@dest.test", "reason": "Bad Reason"},
                     {"address": "x@dest.test", "expires": "2001-01-01 00:00:00"},
                     {"address": "x@dest.test", "colour": "red"}, {"type": "domain", "value": "dest.test"}):
            response = await self.client.post("/v1/suppressions", json_body=body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(set(response.json), {"error"})
        self.assertEqual((await self.client.get("/v1/suppression/x@dest.test")).code, 404)
        self.assertEqual((await self.client.get("/v1/suppressions", token=None)).code, 401)
        # A manual entry stops mail at once too.
        await self.assert_fails_suppressed("bob@dest.test", "complaint")
        self.assertEqual((await self.client.request("DELETE", "/v1/suppression/BOB@dest.test")).code, 200)
        self.assertEqual((await self.client.request("DELETE", "/v1/suppression/bob@dest.test")).code, 404)

    async def test_the_cli_writes_what_the_running_service_obeys(self) -> None:
        rig = await self.start()
        config = Path(rig.harness.data_dir) / "cli.toml"
        config.write_text(f'[server]\ndata_dir = "{rig.harness.data_dir}"\n'
                          f'[storage]\nurl = "{rig.harness.url}"\n')

        async def cli(*args: str) -> tuple[int, str]:
            out, err, code = await utils.getProcessOutputAndValue(SMTPETER, ["--config", str(config), *args],
                                                                  env={})
            return code, out.decode() + err.decode()

        code, out = await cli("suppression", "add", "acme", "Dave@Dest.test", "--reason", "manual", "--json")
        self.assertEqual(code, 0, out)
        self.assertEqual(json.loads(out)["address"], "Dave@dest.test")
        await self.assert_fails_suppressed("dave@dest.test", "manual")
        code, out = await cli("suppression", "list", "acme", "--json")
        self.assertEqual([e["address"] for e in json.loads(out)], ["Dave@dest.test"])
        code, out = await cli("suppression", "export", "acme")
        self.assertEqual(out.splitlines()[0], "address,reason,source,created,expires")
        code, out = await cli("suppression", "add", "acme", "nonsense", "--json")
        self.assertEqual(code, 1)
        self.assertIn("error", json.loads(out))
        code, out = await cli("suppression", "remove", "acme", "dave@dest.test")
        self.assertEqual(code, 0, out)
        code, out = await cli("suppression", "remove", "acme", "dave@dest.test")
        self.assertEqual(code, 1)
        await sleep(1.2)  # the service reads the list's revision again
        (message_id,) = await rig.send("dave@dest.test")
        await rig.wait_for(message_id, "delivered")

    # -- one-click unsubscribe ------------------------------------------------------------------------

    async def fetch(self, url: str, method: str = "GET", body: bytes | None = None) -> Response:
        """``url`` exactly as the mail holds it."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        headers = {b"content-type": [b"application/x-www-form-urlencoded"]} if body is not None else {}
        response = await treq.request(method, url.encode("ascii"), data=body, headers=headers, pool=pool)
        return Response(response.code, response.headers, await response.content())

    async def test_one_click_unsubscribe(self) -> None:
        rig = await self.start()
        (message_id,) = await rig.send("erin@dest.test", options={"oneclick": True})
        await rig.wait_for(message_id, "delivered")
        sent = email.message_from_bytes(self.sink.received[-1].data, policy=email.policy.compat32)
        self.assertEqual(sent["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        (url,) = re.findall(r"<([^>]+)>", sent["List-Unsubscribe"])
        self.assertTrue(url.startswith(self.public_url + "/unsubscribe/"), url)
        # A scanner's GET shows the page and changes nothing.
        page = await self.fetch(url)
        self.assertEqual(page.code, 200)
        self.assertIn('<form method="post">', page.text)
        self.assertIn("erin@dest.test", page.text)
        csp = page.headers.getRawHeaders(b"content-security-policy")[0].decode()
        self.assertIn("default-src 'none'", csp)
        self.assertIn("form-action 'self'", csp)
        self.assertNotIn("<script", page.text)
        await sleep(0.3)
        self.assertEqual([e for e in await rig.events(message_id) if e.type == UNSUBSCRIBE], [])
        self.assertEqual((await self.client.get("/v1/suppression/erin@dest.test")).code, 404)
        # A changed token is a 404 page.
        token = url.rsplit("/", 1)[1]
        tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        for bad in (url[:-len(token)] + tampered, url + "x", self.public_url + "/unsubscribe/"):
            response = await self.fetch(bad, "POST", b"List-Unsubscribe=One-Click")
            self.assertEqual(response.code, 404, bad)
            self.assertIn(b"not valid", response.body)
        # The mail client's one-click POST unsubscribes, once however often it comes.
        for _ in range(2):
            response = await self.fetch(url, "POST", b"List-Unsubscribe=One-Click")
            self.assertEqual(response.code, 200)
        (event,) = [e for e in await rig.events(message_id) if e.type == UNSUBSCRIBE]
        self.assertEqual((event.data["recipient"], event.data["method"]), ("erin@dest.test", "one-click"))
        found = await self.suppressed("erin@dest.test")
        self.assertEqual((found["reason"], found["source"]), ("unsubscribe", message_id))
        self.assertIn("already", (await self.fetch(url)).text)
        await self.assert_fails_suppressed("erin@dest.test", "unsubscribe")

    async def test_one_click_only_when_asked_and_never_over_the_senders_own(self) -> None:
        rig = await self.start()
        own = message("own").replace(b"Subject:", b"List-Unsubscribe: <https://example.com/u/1>\r\nSubject:")
        # Asked for by the SMTP API's header this time.
        mailto = message("mailto").replace(
            b"Subject:", b"List-Unsubscribe: <mailto:u@example.com>\r\nX-Smtpeter-Oneclick: yes\r\nSubject:")
        for data, options in ((message("plain"), {}), (own, {"oneclick": True}), (mailto, {})):
            (message_id,) = await rig.send("frank@dest.test", data=data, options=options)
            await rig.wait_for(message_id, "delivered")
        plain, kept, joined = (email.message_from_bytes(r.data) for r in self.sink.received[-3:])
        self.assertIsNone(plain["List-Unsubscribe"])  # a password reset gets none uninvited
        self.assertEqual((kept["List-Unsubscribe"], kept["List-Unsubscribe-Post"]),
                         ("<https://example.com/u/1>", None))
        self.assertEqual(len(joined.get_all("List-Unsubscribe")), 1)
        targets = re.findall(r"<([^>]+)>", joined["List-Unsubscribe"])
        self.assertEqual(targets[1], "mailto:u@example.com")
        self.assertTrue(targets[0].startswith(self.public_url + "/unsubscribe/"))
        self.assertEqual(joined["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        self.assertIsNone(joined["X-Smtpeter-Oneclick"])
        # Over REST: unsubscribe {"oneclick": true} without a url of its own asks for ours.
        response = await self.client.post("/v1/send", json_body={
            "recipient": "grace@dest.test", "from": "news@example.com", "subject": "Hi", "text": "Hello",
            "unsubscribe": {"oneclick": True}})
        self.assertEqual(response.code, 200, response.body)
        await rig.wait_for(next(iter(response.json)), "delivered")
        sent = email.message_from_bytes(self.sink.received[-1].data)
        self.assertTrue(sent["List-Unsubscribe"].startswith(f"<{self.public_url}/unsubscribe/"))
