"""The REST API through a real listening server and a real HTTP client (treq)."""

from __future__ import annotations

import base64
import calendar
import email
import email.header
import email.policy
import email.utils
import json
import time
import urllib.parse
from types import SimpleNamespace
from xml.etree import ElementTree

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial import unittest
from twisted.web.client import ResponseNeverReceived

from smtpeter.envelope import MessageOptions
from smtpeter.events.metrics import Metrics
from smtpeter.ingress.http.metrics import may_see as may_see_metrics
from smtpeter.ingress.http.openapi import document
from smtpeter.ingress.http.site import API
from tests.support.harness import Harness, Login
from tests.support.http import Client
from tests.support.rig import sleep

# Request shapes as SMTPeter's own documentation and client libraries send them (smtpeter-api.md §2.3).
SMTPETER_MIME = {"recipient": "john@doe.example", "mime": "MIME-Version: 1.0\r\nFrom: <info@example.com>\r\n"
                 "To: <john@doe.example>\r\nSubject: Hello\r\n\r\nHello John.\r\n"}
SMTPETER_FIELDS = {"recipient": "john@doe.example", "from": "info@example.com", "to": "john@doe.example",
                   "subject": "This is the subject", "text": "This is example content"}
SMTPETER_ADVANCED = {"recipient": "john@doe.example", "mime": SMTPETER_MIME["mime"], "inlinecss": True,
                     "trackclicks": True, "trackopens": False, "trackbounces": True, "preventscam": True,
                     "tags": ["tag1", "tag2"], "maxdelivertime": "2099-01-01 00:00:00", "images": "hosted"}
SMTPETER_MULTI = {"recipients": ["one@example.net", "two@example.net"], "from": "info@example.com",
                  "to": ["one@example.net", "two@example.net", '"Number three" <three@example.net>, '
                                                               "info@example.com"],
                  "cc": "John Doe <johndoe@example.org>", "subject": "Hi", "html": "<p>Hi</p>"}
SMTPETER_FORM = ("envelope=info%40example.com&recipient=john%40doe.example&subject=this+is+the+subject"
                 "&html=%3Cp%3Ehello%3C%2Fp%3E")


class APITests(unittest.TestCase):
    async def start(self, **http: object) -> None:
        self.harness = Harness(self, http={"listen": ["tcp:0:interface=127.0.0.1"], **http})
        self.acme: Login = await self.harness.login("acme", domains=("example.com",))
        self.other: Login = await self.harness.login("other", domains=("other.example",))
        await self.harness.start()
        self.api = Client(self.harness.http_url, self.acme.token)
        self.storage = self.harness.storage

    async def send(self, body: dict, **kwargs: object) -> dict:
        response = await self.api.post("/v1/send", json_body=body, **kwargs)
        self.assertEqual(response.code, 200, response.body)
        return response.json

    async def stored(self, message_id: str) -> email.message.EmailMessage:
        content = await self.storage.message_content(message_id)
        return email.message_from_bytes(content.mime, policy=email.policy.default)

    # -- authentication -------------------------------------------------------------

    async def test_tokens(self) -> None:
        await self.start()
        for token, auth in ((None, "query"), ("wrong", "query"), ("wrong", "bearer")):
            response = await self.api.get("/v1/logfiles", token=token, auth=auth)
            self.assertEqual(response.code, 401)
            self.assertEqual(response.json, {"error": "Invalid access token"})
        self.assertEqual((await self.api.get("/v1/logfiles")).code, 200)
        self.assertEqual((await self.api.get("/v1/logfiles", auth="bearer")).code, 200)
        token_id = (await self.storage.api_tokens(self.acme.account_id))[0]["id"]
        _, fresh = await self.storage.create_api_token(self.acme.account_id)
        await self.storage.revoke_api_token(self.acme.account_id, token_id)
        self.assertEqual((await self.api.get("/v1/logfiles", token=fresh)).code, 200)
        other_fresh = (await self.storage.create_api_token(self.acme.account_id))[1]
        await self.storage.revoke_api_token(
            self.acme.account_id, (await self.storage.api_tokens(self.acme.account_id))[-1]["id"])
        self.assertEqual((await self.api.get("/v1/logfiles", token=other_fresh)).code, 401)

    # -- sending -------------------------------------------------------------------------

    async def test_send_raw_mime(self) -> None:
        await self.start()
        body = dict(SMTPETER_MIME, mime=SMTPETER_MIME["mime"].replace("\r\n", "\n"))
        answer = await self.send(body)
        ((message_id, recipient),) = answer.items()
        self.assertEqual(recipient, "john@doe.example")
        entry = await self.storage.recipient(message_id)
        self.assertEqual(entry.account_id, self.acme.account_id)
        content = await self.storage.message_content(message_id)
        self.assertIn(b"Subject: Hello\r\n", content.mime)
        self.assertNotIn(b"\n\n", content.mime.replace(b"\r\n", b""))
        self.assertIn(b"Message-ID: <", content.mime)
        self.assertEqual(content.envelope.sender, None)
        self.assertEqual(content.source, "api")
        self.assertEqual(content.options, MessageOptions(trackclicks=True, trackopens=True, trackbounces=True,
                                                         inlinecss=False, preventscam=False))

    async def test_send_builds_correct_mime_from_fields(self) -> None:
        await self.start()
        pdf = b"%PDF-1.4 fake\x00\xff"
        answer = await self.send({
            "recipient": "jan@dest.example", "from": "Jörg Müller <news@example.com>",
            "to": ["jan@dest.example", '"Ann, B." <ann@dest.example>'], "cc": "c@dest.example",
            "replyto": "reply@example.com", "subject": "Grüße — ✓ test",
            "text": "Hallo Jan,\nä ö ü\n", "html": "<p>Hallo <b>Jan</b> ✓</p>",
            "unsubscribe": {"email": "unsub@example.com", "url": "https://example.com/u?x=1",
                            "oneclick": True},
            "extra": {"x-campaign": "nov-2026"},
            "attachments": [{"data": base64.b64encode(pdf).decode(), "name": "Rechnung Ä.pdf"}],
        })
        (message_id,) = answer
        parsed = await self.stored(message_id)
        self.assertEqual(parsed["From"].addresses[0].display_name, "Jörg Müller")
        self.assertEqual([a.addr_spec for a in parsed["To"].addresses],
                         ["jan@dest.example", "ann@dest.example"])
        self.assertEqual(parsed["To"].addresses[1].display_name, "Ann, B.")
        self.assertEqual(str(parsed["Subject"]), "Grüße — ✓ test")
        self.assertEqual(parsed["Reply-To"].addresses[0].addr_spec, "reply@example.com")
        self.assertEqual(parsed["List-Unsubscribe"],
                         "<mailto:unsub@example.com>, <https://example.com/u?x=1>")
        self.assertEqual(parsed["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        self.assertEqual(parsed["X-Campaign"], "nov-2026")
        self.assertTrue(parsed["Message-ID"] and parsed["Date"])
        self.assertEqual(parsed.get_content_type(), "multipart/mixed")
        text = parsed.get_body(("plain",)).get_content()
        self.assertEqual(text.replace("\r\n", "\n"), "Hallo Jan,\nä ö ü\n")
        self.assertEqual(parsed.get_body(("html",)).get_content().strip(), "<p>Hallo <b>Jan</b> ✓</p>")
        (attachment,) = list(parsed.iter_attachments())
        self.assertEqual(attachment.get_filename(), "Rechnung Ä.pdf")
        self.assertEqual(attachment.get_content_type(), "application/pdf")
        self.assertEqual(attachment.get_content(), pdf)
        raw = (await self.storage.message_content(message_id)).mime
        self.assertTrue(raw.isascii(), "ASCII addresses: the message is 7-bit clean")
        self.assertTrue(all(len(line) <= 998 for line in raw.split(b"\r\n")))

    async def test_smtpeter_request_shapes(self) -> None:
        await self.start()
        self.assertEqual(list((await self.send(SMTPETER_FIELDS)).values()), ["john@doe.example"])
        advanced = await self.send(SMTPETER_ADVANCED)
        content = await self.storage.message_content(next(iter(advanced)))
        self.assertEqual(content.options.trackopens, False)
        self.assertEqual(content.options.images, "hosted")
        self.assertEqual(content.tags, ["tag1", "tag2"])
        # 2099 means "keep trying": capped at 30 days rather than refused.
        self.assertLess(abs(content.expires - (time.time() + 30 * 86400)), 60)
        soon = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 7200))
        soon_id = next(iter(await self.send({**SMTPETER_ADVANCED, "maxdelivertime": soon})))
        self.assertEqual((await self.storage.message_content(soon_id)).expires,
                         float(calendar.timegm(time.strptime(soon, "%Y-%m-%d %H:%M:%S"))))
        multi = await self.send(SMTPETER_MULTI)
        self.assertEqual(sorted(multi.values()), ["one@example.net", "two@example.net"])
        self.assertEqual(len(set(multi)), 2)  # each recipient has its own message id
        form = await self.api.post("/v1/send", form=SMTPETER_FORM)
        self.assertEqual(form.code, 200, form.body)
        (form_id,) = form.json
        parsed = await self.stored(form_id)
        self.assertEqual(parsed["From"].addresses[0].addr_spec, "info@example.com")
        self.assertEqual((await self.storage.message_content(form_id)).envelope.sender, "info@example.com")
        # PHP's http_build_query brackets, and the object form of recipients.
        php = ("recipients%5B0%5D=a%40dest.example&recipients%5B1%5D=b%40dest.example&from=info%40example.com"
               "&text=hi&dsn%5Bret%5D=FULL&dsn%5Bnotify%5D=FAILURE%2CDELAY&extra%5Bx-id%5D=7&trackclicks=false")
        response = await self.api.post("/v1/send", form=php)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(sorted(response.json.values()), ["a@dest.example", "b@dest.example"])
        content = await self.storage.message_content(next(iter(response.json)))
        self.assertEqual((content.envelope.ret, content.options.trackclicks), ("FULL", False))
        keyed = await self.send({"recipients": {"x@dest.example": {"name": "X"}, "y@dest.example": {}},
                                 "from": "info@example.com", "text": "hi"})
        self.assertEqual(sorted(keyed.values()), ["x@dest.example", "y@dest.example"])

    async def test_personalization(self) -> None:
        await self.start()
        # The 2017 documentation's shape: per-recipient data in the recipients object.
        answer = await self.send({
            "recipients": {"jane@dest.example": {"firstname": "Jane", "orders": [{"id": 7}, {"id": 9}]},
                           "john@dest.example": {"firstname": "john"}},
            "data": {"shop": "Acme"}, "from": "{$shop} <info@example.com>", "to": "{$recipient}",
            "subject": "Hello {$firstname|ucfirst}", "envelope": "bounces@example.com",
            "text": "Dear {$firstname|ucfirst},\n{foreach $o in $orders}order {$o.id}\n"
                    "{foreachelse}no orders\n{/foreach}sent by {$envelope}",
            "html": "<style>p{color:red}</style><p>Hi {$firstname|escape}</p>"})
        by_address = {address: message_id for message_id, address in answer.items()}
        self.assertEqual(set(by_address), {"jane@dest.example", "john@dest.example"})
        jane = await self.stored(by_address["jane@dest.example"])
        john = await self.stored(by_address["john@dest.example"])
        self.assertEqual((jane["Subject"], john["Subject"]), ("Hello Jane", "Hello John"))
        self.assertEqual(jane["To"].addresses[0].addr_spec, "jane@dest.example")
        self.assertEqual(jane["From"].addresses[0].display_name, "Acme")
        jane_text = jane.get_body(("plain",)).get_content()
        self.assertEqual(jane_text.replace("\r\n", "\n").strip(),
                         "Dear Jane,\norder 7\norder 9\nsent by bounces@example.com")
        self.assertIn("no orders", john.get_body(("plain",)).get_content())
        self.assertIn("<style>p{color:red}</style><p>Hi Jane</p>", jane.get_body(("html",)).get_content())
        # Each message holds only its own recipient.
        jane_message = (await self.storage.message_content(by_address["jane@dest.example"])).id
        queued = await self.storage.queue(limit=100)
        self.assertEqual([r.address for r in queued if r.message_id == jane_message], ["jane@dest.example"])
        # Whole MIME messages are templates too; "data" serves a single recipient.
        mime = ("From: <info@example.com>\r\nSubject: For {$name}\r\nX-Ref: {$ref}\r\n\r\n"
                "Hello {$name},\r\n{if $vip}You are a VIP.{/if}\r\n")
        (mime_id,) = await self.send({"recipient": "a@dest.example", "mime": mime,
                                      "data": {"name": "Ann", "ref": "R-1", "vip": True}})
        stored = await self.stored(mime_id)
        self.assertEqual((stored["Subject"], stored["X-Ref"]), ("For Ann", "R-1"))
        self.assertIn("You are a VIP.", stored.get_content())
        # Data never becomes a header of its own, in MIME or in fields.
        for body in ({"recipient": "a@dest.example", "mime": mime,
                      "data": {"name": "x\r\nBcc: victim@other.example", "ref": ""}},
                     {"recipient": "a@dest.example", "from": "info@example.com", "text": "t",
                      "subject": "{$name}", "data": {"name": "x\nBcc: victim@other.example"}}):
            response = await self.api.post("/v1/send", json_body=body)
            self.assertEqual(response.code, 400, response.body)
        # Nothing to personalize: one message for everyone, as without data.
        plain = await self.send({"recipients": {"p@dest.example": {}, "q@dest.example": {}},
                                 "from": "info@example.com", "text": "no tags here {not a tag}"})
        contents = [await self.storage.message_content(i) for i in plain]
        self.assertEqual(contents[0].id, contents[1].id)
        # Mistakes are 400s that say what is wrong, and nothing is stored.
        before = len(await self.storage.queue(limit=1000))
        for body, message in (
            ({"text": "{if $x}never closed"}, "missing {/if}"),
            ({"text": "{$x|nonsense}"}, "unknown modifier"),
            ({"text": "{$x}", "data": {"1x": 1}}, "not a variable name"),
            ({"text": "{$x}", "data": ["x"]}, "must be an object"),
            ({"text": "{$x}", "recipients": {"a@dest.example": "not an object"}}, "must be an object"),
        ):
            request = {"recipient": "a@dest.example", "from": "info@example.com", "data": {}, **body}
            response = await self.api.post("/v1/send", json_body=request)
            self.assertEqual(response.code, 400, body)
            self.assertIn(message, response.error)
        self.assertEqual(len(await self.storage.queue(limit=1000)), before)
        # Data from a web form cannot add a part to a multipart message either.
        multipart = ('From: <info@example.com>\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                     "--b1\r\nContent-Type: text/plain\r\n\r\nHi {$name}\r\n--b1--\r\n")
        evil = ("x\r\n--b1\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=a.html"
                "\r\n\r\n<b>")
        for name, status in ((evil, 400), ("x\r\n-- \r\nregards", 200)):
            response = await self.api.post("/v1/send", json_body={
                "recipient": "a@dest.example", "mime": multipart, "data": {"name": name}})
            self.assertEqual(response.code, status, response.body)
        # The single-recipient object form personalizes too.
        (single,) = await self.send({"recipient": {"s@dest.example": {"name": "Sam"}},
                                     "from": "info@example.com", "text": "Hi {$name}"})
        self.assertIn("Hi Sam", (await self.stored(single)).get_content())
        # Numbers JSON cannot hold, and numbers too big for a template, are 400s.
        for number in (b"NaN", b"1e999", b"-Infinity"):
            raw_body = (b'{"recipient": "a@dest.example", "from": "info@example.com", "text": "{$n}", '
                        b'"data": {"n": ' + number + b"}}")
            response = await self.api.post("/v1/send", raw=raw_body, content_type="application/json")
            self.assertEqual(response.code, 400, response.body)
        response = await self.api.post("/v1/send", json_body={
            "recipient": "a@dest.example", "from": "info@example.com", "text": "{$p * 1.21}",
            "data": {"p": 10**400}})
        self.assertEqual(response.code, 400, response.body)
        # A template that would cost too much is refused, not run for hours.
        response = await self.api.post("/v1/send", json_body={
            "recipient": "a@dest.example", "from": "info@example.com", "data": {"s": "x" * 1_000_000},
            "text": "{foreach $i in 100000|range}{if $s|md5 == 'z'}{/if}{/foreach}"})
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("more work", response.error)

    async def test_dsn_and_legacy_option_names(self) -> None:
        await self.start()
        answer = await self.send({"recipient": "a@dest.example", "envelope": "bounces@example.com",
                                  "from": "info@example.com", "text": "x", "clicktracking": False,
                                  "dsn": {"notify": "success,failure", "ret": "hdrs", "envid": "ENV 1",
                                          "orcpt": "a@dest.example"}})
        (message_id,) = answer
        content = await self.storage.message_content(message_id)
        self.assertEqual((content.envelope.ret, content.envelope.envid, content.envelope.sender),
                         ("HDRS", "ENV 1", "bounces@example.com"))
        self.assertFalse(content.options.trackclicks)
        rows = await self.storage.db.query("SELECT notify, orcpt FROM recipients WHERE id = ?", (message_id,))
        self.assertEqual(rows, [("SUCCESS,FAILURE", "rfc822;a@dest.example")])

    async def test_fields_can_never_inject_headers(self) -> None:
        await self.start()
        base = {"recipient": "a@dest.example", "from": "info@example.com", "text": "x"}
        for field, value in (("subject", "hi\r\nBcc: victim@x.example"), ("subject", "hi\nX-Evil: 1"),
                             ("from", "info@example.com\r\nBcc: v@x.example"),
                             ("to", "a@dest.example\nBcc: v@x.example"),
                             ("extra", {"x-ok": "fine\r\nBcc: v@x.example"}),
                             ("extra", {"Bcc": "v@x.example"}), ("extra", {"x-a\r\nb": "1"}),
                             ("replyto", "r@example.com\r\nX: y"),
                             ("attachments", [{"data": "eA==", "name": "a\r\nb.txt"}]),
                             ("dsn", {"envid": "a\r\nb"}),
                             # Encoded-words that decode to line breaks (CVE-2024-6923's path).
                             ("subject", "=?utf-8?q?hi=0D=0ABcc:_victim@x.example?="),
                             ("subject", "=?utf-8?b?aGkNCkJjYzogdkB4LmV4YW1wbGU=?="),
                             ("to", "=?utf-8?q?A=0D=0ABcc:_v@x.example?= <a@dest.example>"),
                             ("from", "=?utf-8?q?Boss=0ABcc:_v@x.example?= <info@example.com>"),
                             ("extra", {"x-ok": "=?utf-8?q?a=0D=0AX-Evil:_1?="}),
                             ("attachments", [{"data": "eA==", "name": "=?utf-8?q?a=0D=0Ab.txt?="}]),
                             # Control characters, line separators, lone surrogates: 400, not 500.
                             ("subject", "a\x00b"), ("subject", "a\x1bb"), ("subject", "a\u2028b"),
                             ("subject", "a\ud800b"), ("text", "a\x00b"), ("to", "a\x85@dest.example"),
                             ("subject", "=?\u00e9?q?x?="), ("subject", "=?x-unknown?q?x?=")):
            response = await self.api.post("/v1/send", json_body={**base, field: value})
            self.assertEqual(response.code, 400, (field, value, response.body))
            self.assertTrue(response.error)
        self.assertEqual(await self.storage.queue(), [])
        # Encoded-words that hold ordinary text stay ordinary text, re-encoded by us.
        (message_id,) = await self.send({**base, "subject": "=?utf-8?q?Caf=C3=A9?= menu",
                                         "to": '"Doe, \\"Jr\\"" <"john doe"@dest.example>'})
        stored = await self.stored(message_id)
        self.assertEqual(str(stored["Subject"]), "Café menu")
        self.assertEqual(stored["To"].addresses[0].addr_spec, '"john doe"@dest.example')
        self.assertEqual(stored["To"].addresses[0].display_name, 'Doe, "Jr"')
        raw = (await self.storage.message_content(message_id)).mime
        self.assertNotIn(b'""john doe""', raw)  # a quoted local part is not quoted twice

    async def test_long_header_values_are_folded_and_decode_exactly(self) -> None:
        """No header line over 998 octets (the next hop's "500 Line too long") and none over 78
        where folding or encoded-words allow; every value decodes back to exactly what was sent."""
        await self.start()
        subject = "x" * 1999
        extra = "y" * 1000 + " z " + "ü" * 900
        names = {"from": "Jörg " + "M" * 1990, "to": "N" * 1999, "cc": "Grüße aus Köln — " + "word " * 300,
                 "replyto": 'Doe, "Jr" ' * 100 + "end"}
        quoted = {field: '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
                  for field, name in names.items()}
        (message_id,) = await self.send({
            "recipient": "a@dest.example", "text": "x", "subject": subject, "extra": {"x-long": extra},
            "from": f"{quoted['from']} <info@example.com>",
            "to": [f"{quoted['to']} <a@dest.example>", "b@dest.example"],
            "cc": f"{quoted['cc']} <c@dest.example>", "replyto": f"{quoted['replyto']} <r@example.com>"})
        raw = (await self.storage.message_content(message_id)).mime
        head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual([line[:40] for line in head if len(line) > 78], [])
        stored = await self.stored(message_id)
        self.assertEqual((str(stored["Subject"]), stored["X-Long"]), (subject, extra))
        # Display names decoded as mail readers do, white space between encoded-words dropped
        # (RFC 2047 §6.2); Python 3.11's headerregistry keeps it in a phrase, so not with that.
        unparsed = email.message_from_bytes(raw, policy=email.policy.compat32)
        for field, header in (("from", "From"), ("to", "To"), ("cc", "Cc"), ("replyto", "Reply-To")):
            (phrase, _), *_ = email.utils.getaddresses([unparsed[header].replace("\r\n", "")])
            display = str(email.header.make_header(email.header.decode_header(phrase)))
            self.assertEqual(display, names[field], field)
        self.assertEqual(stored["To"].addresses[1].addr_spec, "b@dest.example")
        # A field name too long to leave a value room on its line, an unfoldable URL: refused.
        base = {"recipient": "a@dest.example", "from": "info@example.com", "text": "x"}
        for body, text in (({**base, "extra": {"x-" + "a" * 75: "v"}}, "at most 76 characters"),
                           ({**base, "unsubscribe": {"url": "https://u.example/" + "a" * 900}},
                            "'unsubscribe.url' is longer than 900")):
            response = await self.api.post("/v1/send", json_body=body)
            self.assertEqual(response.code, 400, response.body)
            self.assertIn(text, response.error)

    async def test_addresses_are_taken_whole_or_refused(self) -> None:
        """No part of what a client gave in from/to/cc/replyto is silently dropped or reread."""
        await self.start()
        base = {"recipient": "a@dest.example", "from": "info@example.com", "text": "x"}
        for field, value, text in (
            # getaddresses read "...X-Inj:" as a group name, dropped it and sent "To: _1?= <r@...>".
            ("to", "=?utf-8?q?x=0D=0AX-Inj:_1?= <r@outside.test>", "'to'"),
            ("to", "x=?utf-8?q?=0D=0AX-Inj:_1?= <r@outside.test>", "'to'"),
            ("to", "undisclosed-recipients:;", "group syntax"),
            ("cc", ["a@dest.example", "Team: b@dest.example, c@dest.example;"], "'cc[1]'"),
            ("to", "a@dest.example (Ann)", "comments"),
            ("to", "Ann (Sales) <a@dest.example>", "comments"),
            ("replyto", "Ann <a@dest.example> <b@dest.example>", "'replyto'"),
            ("replyto", "Ann <a@dest.example> trailing", "'replyto'"),
            ("from", '"unterminated <info@example.com>', "'from'"),
            ("from", "In[fo] <info@example.com>", "'from'"),
            ("to", "a@dest.example b@dest.example", "'to'"),
        ):
            response = await self.api.post("/v1/send", json_body={**base, field: value})
            self.assertEqual(response.code, 400, (field, value, response.body))
            self.assertIn(text, response.error, value)
        self.assertEqual(await self.storage.queue(), [])
        (message_id,) = await self.send({
            **base, "from": "Dr. Who <info@example.com>",
            "to": ['"Ann, B." <ann@dest.example>, c@dest.example,',
                   "=?utf-8?q?Caf=C3=A9?= <cafe@dest.example>", '"x@other.example" <x@dest.example>',
                   "<bare@dest.example>"]})
        stored = await self.stored(message_id)
        self.assertEqual(stored["From"].addresses[0].display_name, "Dr. Who")
        self.assertEqual([(a.display_name, a.addr_spec) for a in stored["To"].addresses], [
            ("Ann, B.", "ann@dest.example"), ("", "c@dest.example"), ("Café", "cafe@dest.example"),
            ("x@other.example", "x@dest.example"), ("", "bare@dest.example")])

    async def test_attachment_names_that_mislead_are_refused(self) -> None:
        await self.start()
        base = {"recipient": "a@dest.example", "from": "info@example.com", "text": "x"}
        for name, reason in (
            ("..", "is a path"), (".", "is a path"), ("a/b.txt", "is a path"), ("..\\x.txt", "is a path"),
            ("CON", "device name"), ("nul.txt", "device name"), ("Com1.tar.gz", "device name"),
            ("LPT9", "device name"), ("aux .pdf", "device name"), ("conout$", "device name"),
            ("report.pdf.", "ends in a dot or space"), ("report.pdf ", "ends in a dot or space"),
            ("invoice\u202efdp.exe", "U+202E"), ("a\u202ab.pdf", "U+202A"), ("a\u2067b.pdf", "U+2067"),
            ("a\u2069b.pdf", "U+2069"), ("a\u200eb.pdf", "U+200E"), ("a\u200fb.pdf", "U+200F"),
            ("a\u061cb.pdf", "U+061C"), ("a\u2060b.pdf", "U+2060"), ("\ufeffa.pdf", "U+FEFF"),
            ("=?utf-8?q?a=E2=80=AEfdp.exe?=", "U+202E"),
        ):
            attachments = [{"data": "eA==", "name": "ok.txt"}, {"data": "eA==", "name": name}]
            response = await self.api.post("/v1/send", json_body={**base, "attachments": attachments})
            self.assertEqual(response.code, 400, (name, response.body))
            self.assertIn("'attachments[1].name'", response.error, name)
            self.assertIn(reason, response.error, name)
        self.assertEqual(await self.storage.queue(), [])
        # Persian needs the zero-width non-joiner (U+200C): it is not refused.
        fine = [".profile", "console.log", "nullable.txt", "com10.txt", "R\u00e9sum\u00e9 (final).docx",
                "\u0646\u0627\u0645\u0647\u200c\u0647\u0627.pdf"]
        (message_id,) = await self.send({**base, "attachments": [{"data": "eA==", "name": n} for n in fine]})
        stored = await self.stored(message_id)
        self.assertEqual([part.get_filename() for part in stored.iter_attachments()], fine)

    async def test_headers_object(self) -> None:
        """SMTPeter's ``headers`` convenience object, as third-party clients send it."""
        await self.start()
        base = {"recipient": "a@dest.example", "text": "x"}
        (message_id,) = await self.send({**base, "headers": {
            "From": "Info <info@example.com>", "to": "Ann <a@dest.example>", "CC": ["c@dest.example"],
            "Reply-To": "reply@example.com", "Subject": "Hi there", "X-Custom": "v1"},
            "extra": {"x-other": "v2"}})
        stored = await self.stored(message_id)
        self.assertEqual(stored["From"].addresses[0].display_name, "Info")
        self.assertEqual(stored["To"].addresses[0].addr_spec, "a@dest.example")
        self.assertEqual(stored["Cc"].addresses[0].addr_spec, "c@dest.example")
        self.assertEqual(stored["Reply-To"].addresses[0].addr_spec, "reply@example.com")
        self.assertEqual((stored["Subject"], stored["X-Custom"], stored["X-Other"]), ("Hi there", "v1", "v2"))
        # Given both ways, a field must say the same thing both times: neither silently wins.
        same = await self.send({**base, "from": "info@example.com", "subject": "S",
                                "headers": {"subject": "S", "from": "info@example.com"},
                                "replyto": "r@example.com", "replyTo": "r@example.com"})
        self.assertEqual((await self.stored(next(iter(same))))["Subject"], "S")
        fields = {**base, "from": "info@example.com"}
        for body, status, text in (
            ({**fields, "headers": {"Foo": "x"}}, 400, "'headers.Foo': only From, To, Cc, Reply-To, Subject"),
            ({**fields, "headers": {"Bcc": "v@x.example"}}, 400, "use 'bcc'"),
            ({**fields, "subject": "A", "headers": {"Subject": "B"}}, 400,
             "'headers.Subject' and 'subject' differ"),
            ({**fields, "extra": {"x-a": "1"}, "headers": {"X-A": "2"}}, 400,
             "'headers.X-A' and 'extra.x-a'"),
            ({**fields, "replyto": "a@example.com", "replyTo": "b@example.com"}, 400,
             "'replyTo' and 'replyto'"),
            ({**base, "headers": {"From": "Info <bad>"}}, 400, "'headers.From'"),
            ({**fields, "headers": {"To": ["a@dest.example", "bad"]}}, 400, "'headers.To[1]'"),
            ({**fields, "headers": {"Subject": "a\r\nBcc: v@x.example"}}, 400, "'headers.Subject'"),
            ({**fields, "headers": {"X-Smtpeter-Tags": "a"}}, 400, "'headers.X-Smtpeter-Tags'"),
            ({**fields, "headers": {"X-A": "=?utf-8?q?a=0D=0AX-Evil:_1?="}}, 400, "'headers.X-A'"),
            ({**fields, "headers": "Subject: x"}, 400, "'headers' must be an object"),
            ({"recipient": "a@dest.example", "mime": "From: <info@example.com>\r\n\r\nx",
              "headers": {"Subject": "x"}}, 400, "either 'mime' or the message fields, not both ('headers')"),
        ):
            response = await self.api.post("/v1/send", json_body=body)
            self.assertEqual(response.code, status, (body, response.body))
            self.assertIn(text, response.error, body)
        self.assertEqual(len(await self.storage.queue(limit=10)), 2)

    async def test_form_bodies(self) -> None:
        await self.start()
        base = "recipient=a%40dest.example&from=info%40example.com&text=x"
        # Conflicting shapes of one field are a 400, never a 500.
        for form, text in ((base + "&tags=a&tags%5Bk%5D=b", "conflicts"),
                           (base + "&dsn%5Bret%5D=FULL&dsn=x", "dsn"),
                           (base + "&extra%5Bx-a%5D=1&extra%5Bx-a%5D%5Bb%5D=2", "conflicts"),
                           (base + "&subject=%FF", "not valid UTF-8")):
            response = await self.api.post("/v1/send", form=form)
            self.assertEqual(response.code, 400, (form, response.body))
            self.assertIn(text, response.error, form)
        # bcc recipients are envelope recipients only; "0" is a false oneclick; base64 may wrap.
        attachment = base64.encodebytes(b"x" * 200).decode()
        form = (base + "&bcc%5B%5D=hidden%40dest.example&unsubscribe%5Burl%5D=https%3A%2F%2Fu.example%2F1"
                "&unsubscribe%5Boneclick%5D=0&attachments%5B0%5D%5Bname%5D=x.bin&attachments%5B0%5D%5Bdata%5D="
                + urllib.parse.quote(attachment))
        response = await self.api.post("/v1/send", form=form)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(sorted(response.json.values()), ["a@dest.example", "hidden@dest.example"])
        stored = await self.stored(next(iter(response.json)))
        self.assertNotIn("hidden", str(stored))
        self.assertIsNone(stored["List-Unsubscribe-Post"])
        self.assertEqual([p.get_content() for p in stored.iter_attachments()], [b"x" * 200])
        # A flood of form fields without a token is refused before it costs much.
        flood = "&".join(f"f{i}=1" for i in range(20000))
        response = await self.api.post("/v1/send", form=flood, token=None)
        self.assertIn(response.code, (400, 401))
        response = await self.api.post("/v1/send", form=flood)
        self.assertEqual(response.code, 400)
        self.assertIn("more than", response.error)

    async def test_every_malformed_field_gets_a_clear_4xx(self) -> None:
        await self.start(max_recipients=3)
        base = {"recipient": "a@dest.example", "from": "info@example.com", "text": "x"}
        cases = [
            (b"{not json", 400, "invalid JSON"),
            (b"[1, 2]", 400, "must be an object"),
            ({"from": "info@example.com", "text": "x"}, 400, "'recipient' or 'recipients' is required"),
            ({**base, "recipient": "not an address"}, 400, "'recipient'"),
            # An error about one element of a list names that element.
            ({**base, "recipients": ["b@dest.example", "x"]}, 400, "'recipients[1]': 'x' is not a valid"),
            ({**base, "bcc": ["b@dest.example", "c@dest.example, x"]}, 400, "'bcc[1]'"),
            ({**base, "to": ["b@dest.example", "Ann <x>"]}, 400, "'to[1]'"),
            ({**base, "cc": ["b@dest.example", {}]}, 400, "'cc[1]' must be a string"),
            ({**base, "tags": ["a", ["b"]]}, 400, "'tags[1]' must be a string"),
            ({**base, "recipient": ["a@d.example", "b@d.example", "c@d.example", "d@d.example"]}, 413,
             "too many recipients"),
            ({**base, "envelope": "@@"}, 400, "'envelope'"),
            ({**base, "tags": ["ok", "has space"]}, 400, "'tags[1]'"),
            ({**base, "tags": "semi;colon"}, 400, "'tags'"),
            ({**base, "maxdelivertime": "tomorrow"}, 400, "'maxdelivertime'"),
            ({**base, "maxdelivertime": "2001-01-01 00:00:00"}, 400, "in the past"),
            ({**base, "maxdelivertime": "2099-02-30 00:00:00"}, 400, "'maxdelivertime'"),
            ({**base, "trackclicks": "maybe"}, 400, "'trackclicks'"),
            ({**base, "images": "inline"}, 400, "'images'"),
            ({**base, "dsn": {"ret": "ALL"}}, 400, "'dsn.ret'"),
            ({**base, "dsn": {"notify": "SOMETIMES"}}, 400, "'dsn.notify'"),
            ({**base, "dsn": {"what": 1}}, 400, "dsn.what"),
            ({**base, "mime": "From: x\r\n\r\nx"}, 400, "either 'mime' or the message fields"),
            ({"recipient": "a@dest.example", "from": "info@example.com"}, 400, "'text' or 'html'"),
            ({"recipient": "a@dest.example", "text": "x"}, 400, "'from' is required"),
            ({**base, "from": "a@example.com, b@example.com"}, 400, "exactly one"),
            ({**base, "attachments": [{"data": "!!", "name": "x"}]}, 400, "base64"),
            ({**base, "attachments": [{"url": "http://169.254.169.254/", "name": "x"}]}, 400, "not fetched"),
            ({**base, "attachments": "x"}, 400, "'attachments'"),
            ({**base, "attachments": [{"data": "", "name": "x", "type": "application/" + "x" * 2000}]}, 400,
             "'attachments[0].type'"),
            ({**base, "unsubscribe": {"url": "javascript:x"}}, 400, "'unsubscribe.url'"),
            ({**base, "unsubscribe": {"url": "http://x.example", "oneclick": True}}, 400, "https"),
            ({**base, "template": 12}, 400, "templates are not supported"),
            ({**base, "colour": "red"}, 400, "unknown field 'colour'"),
            ({**base, "subject": {"a": 1}}, 400, "'subject' must be a string"),
        ]
        for body, status, text in cases:
            if isinstance(body, bytes):
                response = await self.api.post("/v1/send", raw=body, content_type="application/json")
            else:
                response = await self.api.post("/v1/send", json_body=body)
            self.assertEqual(response.code, status, (body, response.body))
            self.assertIn(text, response.error, body)
        response = await self.api.post("/v1/send", raw=b"<xml/>", content_type="application/xml")
        self.assertEqual(response.code, 415)
        self.assertEqual(await self.storage.queue(), [])

    async def test_size_limits(self) -> None:
        await self.start(max_body_size=20000)
        response = await self.api.post("/v1/send", json_body={
            "recipient": "a@dest.example", "from": "info@example.com", "text": "x" * 30000})
        self.assertEqual(response.code, 413)
        self.assertIn("larger than", response.error)
        self.assertEqual(await self.storage.queue(), [])

    async def test_large_bodies_take_their_turn(self) -> None:
        """Large bodies are decoded and composed a budget's worth at a time, not all at once; a
        body over the size limit is refused without waiting; a client that leaves while it
        waits gives its turn up and has nothing stored."""
        await self.start(max_body_size=4_000_000)
        api = self.harness.service.api
        budget = api.large_bodies
        budget.limit = 3_000_000
        seen: list[tuple[int, int]] = []
        store = api.submission.store

        async def watched_store(messages: list) -> list:
            seen.append((budget.held, budget.waiting))
            return await store(messages)

        self.patch(api.submission, "store", watched_store)
        await budget.acquire(budget.limit)  # someone else's large body is in work

        def big(name: str) -> dict:
            data = base64.b64encode(name.encode() * (1_400_000 // len(name))).decode()
            return {"recipient": "a@dest.example", "from": "info@example.com", "text": "x",
                    "attachments": [{"name": name, "data": data}]}

        size = len(json.dumps(big("one.bin")))
        self.assertGreater(size, 1024 * 1024)
        waiting = [defer.ensureDeferred(self.api.post("/v1/send", json_body=big(n)))
                   for n in ("one.bin", "two.bin", "six.bin")]
        leaving = defer.ensureDeferred(self.api.post("/v1/send", json_body=big("gone.bin")))
        while budget.waiting < 4:
            await sleep(0.01)
        response = await self.api.post("/v1/send", json_body={**big("over.bin"), "text": "x" * 5_000_000})
        self.assertEqual(response.code, 413)
        leaving.cancel()
        with self.assertRaises(ResponseNeverReceived):
            await leaving
        while budget.waiting > 3:
            await sleep(0.01)
        self.assertEqual(await self.storage.queue(), [])
        budget.release(budget.limit)
        responses = [await d for d in waiting]
        self.assertEqual([r.code for r in responses], [200, 200, 200])
        # Two bodies do not fit the budget together: each was in work alone, the others waiting.
        self.assertEqual(seen, [(size, 2), (size, 1), (size, 0)])
        self.assertEqual(budget.held, 0)
        self.assertEqual(len(await self.storage.queue(limit=10)), 3)

    async def test_sender_domain_rule_and_account_scope(self) -> None:
        await self.start()
        response = await self.api.post("/v1/send", json_body={
            "recipient": "a@dest.example", "from": "ceo@other.example", "text": "x"})
        self.assertEqual(response.code, 403)
        self.assertIn("not an approved sender domain", response.error)
        (mine,) = await self.send({"recipient": "a@dest.example", "from": "info@example.com", "text": "x"})
        other = Client(self.harness.http_url, self.other.token)
        for path in (f"/v1/events/messageid/{mine}", f"/v1/text/{mine}", f"/v1/recipient/{mine}",
                     f"/v1/envelope/{mine}", f"/v1/headers/{mine}", f"/v1/attachments/{mine}",
                     f"/v1/attachments/{mine}/0"):
            response = await other.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.json, {"error": "Not found"})
        response = await other.post("/v1/resend", json_body={"message": mine})
        self.assertEqual(response.code, 404)
        self.assertEqual((await other.get("/v1/logfiles")).json, [])

    # -- events, log files, the archive -----------------------------------------------

    async def test_events(self) -> None:
        await self.start()
        (first,) = await self.send({"recipient": "a@dest.example", "from": "info@example.com", "text": "x",
                                    "tags": ["nov", "promo"], "envelope": "b@example.com"})
        await self.send({"recipient": "b@dest.example", "from": "info@example.com", "text": "x",
                         "tags": ["nov"]})
        response = await self.api.get(f"/v1/events/messageid/{first}")
        self.assertEqual(response.code, 200)
        ((event),) = response.json
        self.assertEqual(event["event"], "attempt")
        self.assertEqual(list(event["data"]), ["id", "time", "envelope", "recipient", "properties", "tags",
                                               "templateid"])
        self.assertEqual((event["data"]["id"], event["data"]["envelope"], event["data"]["tags"]),
                         (first, "b@example.com", "nov;promo"))
        self.assertEqual(event["data"]["properties"], "trackbounces;trackclicks;trackopens")
        by_address = (await self.api.get("/v1/events/email/A@dest.example")).json
        self.assertEqual([e["data"]["id"] for e in by_address], [first])
        self.assertEqual(len((await self.api.get("/v1/events/tags/nov")).json), 2)
        self.assertEqual(len((await self.api.get("/v1/events/tags/nov;promo")).json), 1)
        self.assertEqual(len((await self.api.get("/v1/events/tags/nov?tags=promo")).json), 1)
        self.assertEqual(len((await self.api.get("/v1/events/email/a@dest.example?tags=nov;promo")).json), 1)
        self.assertEqual(len((await self.api.get("/v1/events/email/a@dest.example?tags=nov;other")).json), 0)
        many = ";".join(str(i) for i in range(1100))
        response = await self.api.get(f"/v1/events/tags/x?tags={many}")
        self.assertEqual(response.code, 400)
        self.assertIn("at most", response.error)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual(len((await self.api.get(f"/v1/events/tags/nov?start={today}")).json), 2)
        self.assertEqual((await self.api.get("/v1/events/tags/nov?start=2001-01-01")).json, [])
        for query, text in (("start=yesterday", "'start'"), (f"start={today}&end={today}", "'end'"),
                            ("start=9999-12-31", "'start'"), ("end=0001-01-01", "'end'")):
            response = await self.api.get(f"/v1/events/tags/nov?{query}")
            self.assertEqual(response.code, 400)
            self.assertIn(text, response.error)
        self.assertEqual((await self.api.get("/v1/events/messageid/doesnotexist")).code, 404)
        # Mailbox names are found whatever their case; the events keep the case they were sent with.
        (upper,) = await self.send({"recipient": "Jane.Doe@Dest.example", "from": "info@example.com",
                                    "text": "x"})
        for address in ("jane.doe@dest.example", "JANE.DOE@DEST.EXAMPLE"):
            found = (await self.api.get(f"/v1/events/email/{address}")).json
            self.assertEqual([(e["data"]["id"], e["data"]["recipient"]) for e in found],
                             [(upper, "Jane.Doe@dest.example")])

    async def test_logfiles(self) -> None:
        await self.start()
        (message_id,) = await self.send({"recipient": "a@dest.example", "from": "info@example.com",
                                         "text": "x", "tags": ["t1"]})
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual((await self.api.get("/v1/logfiles")).json, [today])
        self.assertEqual((await self.api.get(f"/v1/logfiles/{today}")).json, [f"attempts.{today}.log"])
        plain = await self.api.get(f"/v1/logfiles/attempts.{today}.log")
        self.assertEqual(plain.code, 200)
        self.assertTrue(plain.content_type.startswith("text/csv"))
        fields = plain.text.strip().split(",")
        self.assertEqual((fields[0], fields[3], fields[5], fields[6]),
                         (message_id, "a@dest.example", "t1", "0"))
        header = await self.api.get(f"/v1/logfiles/attempts.{today}.log/header")
        self.assertEqual(header.text.splitlines()[0], "id,time,envelope,recipient,properties,tags,templateid")
        as_json = await self.api.get(f"/v1/logfiles/attempts.{today}.log/json")
        self.assertEqual(as_json.json[0]["id"], message_id)
        as_xml = await self.api.get(f"/v1/logfiles/attempts.{today}.log/xml")
        self.assertIn(f"<record><id>{message_id}</id>".encode(), as_xml.body)
        self.assertEqual((await self.api.get(f"/v1/logfiles/deliveries.{today}.log")).text, "")
        for path in ("/v1/logfiles/nonsense", f"/v1/logfiles/passwords.{today}.log",
                     f"/v1/logfiles/attempts.{today}.log/pdf", "/v1/logfiles/attempts.9999-12-31.log"):
            self.assertEqual((await self.api.get(path)).code, 404, path)
        # Tokens in URLs never reach the access log, which only the operator may read.
        access_log = self.harness.service.config.data_path / "http-access.log"
        logged = access_log.read_text()
        self.assertIn(f"/v1/logfiles/attempts.{today}.log?access_token=- ", logged)
        self.assertNotIn(self.acme.token, logged)
        self.assertEqual(access_log.stat().st_mode & 0o777, 0o600)

    async def test_archive_and_resend(self) -> None:
        await self.start()
        logo = b"\x89PNG fake"
        mime = (
            "MIME-Version: 1.0\r\nFrom: <info@example.com>\r\nSubject: parts\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            '--b1\r\nContent-Type: multipart/related; boundary="b2"\r\n\r\n'
            '--b2\r\nContent-Type: multipart/alternative; boundary="b3"\r\n\r\n'
            "--b3\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text ä\r\n"
            '--b3\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<img src="cid:logo1">\r\n--b3--\r\n'
            "--b2\r\nContent-Type: image/png\r\nContent-ID: <logo1>\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
            f"{base64.b64encode(logo).decode()}\r\n--b2--\r\n"
            '--b1\r\nContent-Type: text/csv; name="data.csv"\r\n'
            'Content-Disposition: attachment; filename="data.csv"\r\n\r\na,b\r\n1,2\r\n--b1--\r\n'
        )
        (message_id,) = await self.send({"recipient": "a@dest.example", "mime": mime,
                                         "envelope": "bounce@example.com"})
        self.assertEqual((await self.api.get(f"/v1/recipient/{message_id}")).text, "a@dest.example")
        self.assertEqual((await self.api.get(f"/v1/envelope/{message_id}")).text, "bounce@example.com")
        self.assertEqual((await self.api.get(f"/v1/text/{message_id}")).text.strip(), "plain text ä")
        self.assertEqual((await self.api.get(f"/v1/html/{message_id}")).text.strip(), '<img src="cid:logo1">')
        headers = (await self.api.get(f"/v1/headers/{message_id}")).text
        self.assertIn("Subject: parts", headers)
        self.assertEqual((await self.api.get(f"/v1/header/{message_id}")).text, headers)
        listing = (await self.api.get(f"/v1/attachments/{message_id}")).json
        # The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1).
        self.assertEqual(listing, [{"name": "data.csv", "rank": 0, "type": "text/csv", "size": 8}])
        for item in ("0", "data.csv"):
            download = await self.api.get(f"/v1/attachments/{message_id}/{item}")
            self.assertEqual((download.code, download.body), (200, b"a,b\r\n1,2"))
        self.assertEqual((await self.api.get(f"/v1/attachments/{message_id}/5")).code, 404)
        embeds = (await self.api.get(f"/v1/embeds/{message_id}")).json
        self.assertEqual(embeds, [{"name": "logo1", "rank": 0, "type": "image/png", "size": len(logo)}])
        self.assertEqual((await self.api.get(f"/v1/embeds/{message_id}/logo1")).body, logo)
        (plain_id,) = await self.send({"recipient": "a@dest.example", "from": "info@example.com",
                                       "text": "x"})
        self.assertEqual((await self.api.get(f"/v1/html/{plain_id}")).code, 404)
        resent = await self.api.post("/v1/resend", json_body={"message": message_id})
        self.assertEqual(resent.code, 200, resent.body)
        ((new_id, address),) = resent.json.items()
        self.assertNotEqual(new_id, message_id)
        self.assertEqual(address, "a@dest.example")
        original, again = await self.stored(message_id), await self.stored(new_id)
        # A new message: its own Message-ID (receivers drop repeats of one) and Date.
        self.assertNotEqual(again["Message-ID"], original["Message-ID"])
        self.assertEqual(len(again.get_all("Message-ID")), 1)
        self.assertEqual(len(again.get_all("Date")), 1)

        def without_identity(message: email.message.EmailMessage) -> list:
            return [(k, v) for k, v in message.items() if k.lower() not in ("message-id", "date")]

        self.assertEqual(without_identity(again), without_identity(original))
        self.assertEqual(again.get_payload(0).as_bytes(), original.get_payload(0).as_bytes())
        self.assertEqual((await self.api.post("/v1/resend", json_body={})).code, 400)
        # The DSN request of the original recipient goes with the resent message.
        (dsn_id,) = await self.send({"recipient": "b@dest.example", "from": "info@example.com", "text": "x",
                                     "envelope": "bounce@example.com",
                                     "dsn": {"notify": "SUCCESS,FAILURE", "orcpt": "b@dest.example"}})
        (resent_id,) = (await self.api.post("/v1/resend", json_body={"message": dsn_id})).json
        entry = await self.storage.recipient(resent_id)
        self.assertEqual((entry.notify, entry.orcpt), ("SUCCESS,FAILURE", "rfc822;b@dest.example"))
        # Ids we could never have made are not found, whatever they hold.
        for bogus in ("0" * 17, "%00" * 18, "..%2F" + "a" * 14, "A" * 18, "i" * 18):
            self.assertEqual((await self.api.get(f"/v1/text/{bogus}")).code, 404, bogus)
            self.assertEqual((await self.api.get(f"/v1/events/messageid/{bogus}")).code, 404, bogus)

    # -- documents without a token ---------------------------------------------------

    async def test_openapi_document_matches_the_routes(self) -> None:
        await self.start()
        response = await self.api.get("/v1/openapi.json", token=None)
        self.assertEqual(response.code, 200)
        served = response.json
        self.assertEqual(served["openapi"], "3.0.3")
        documented = {(path, method) for path, item in served["paths"].items() for method in item}
        routed = set()
        for rule in API.app.url_map.iter_rules():
            path = rule.rule
            if path.startswith("/dashboard"):
                continue  # HTML pages for people, not the REST API
            for converter in ("<path:", "<"):
                path = path.replace(converter, "{")
            path = path.replace(">", "}")
            for name in ("{message_id}",):
                path = path.replace(name, "{id}")
            path = path.replace("{form}", "{format}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routed.add((path, method.lower()))
        self.assertEqual(routed, documented)
        self.assertEqual(served, json.loads(json.dumps(document(self.harness.service.config.public_url))))

    async def test_metrics(self) -> None:
        await self.start()

        async def scrape() -> dict[str, Metric]:
            response = await self.api.get("/metrics", token=None)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.content_type, "text/plain; version=0.0.4; charset=utf-8")
            return _families(response.text)

        def value(families: dict[str, Metric], sample_name: str) -> float:
            (sample,) = [s for f in families.values() for s in f.samples if s.name == sample_name]
            return sample.value

        before = await scrape()
        # (prometheus_client adds each counter's start time as <name>_created, a gauge)
        self.assertEqual({name: family.type for name, family in before.items()
                          if not name.endswith("_created")}, {
            "smtpeter_accepted": "counter", "smtpeter_delivered": "counter", "smtpeter_deferred": "counter",
            "smtpeter_failed": "counter", "smtpeter_expired": "counter", "smtpeter_bounced": "counter",
            "smtpeter_clicks": "counter", "smtpeter_bot_clicks": "counter",
            "smtpeter_opens": "counter", "smtpeter_bot_opens": "counter", "smtpeter_hits_dropped": "counter",
            "smtpeter_received": "counter", "smtpeter_bounces_received": "counter",
            "smtpeter_responses_received": "counter", "smtpeter_complaints_received": "counter",
            "smtpeter_queue_depth": "gauge", "smtpeter_destination_connections": "gauge",
            "smtpeter_destination_queued": "gauge", "smtpeter_destination_paused": "gauge",
            "smtpeter_destination_deferral_ratio": "gauge"})
        self.assertEqual(value(before, "smtpeter_accepted_total"), 0)
        self.assertEqual(value(before, "smtpeter_queue_depth"), 0)
        await self.send({"recipient": "a@dest.example", "from": "info@example.com", "text": "x"})
        after = await scrape()
        self.assertEqual(value(after, "smtpeter_accepted_total"), 1)
        self.assertEqual(value(after, "smtpeter_queue_depth"), 1)
        self.assertEqual(value(after, "smtpeter_delivered_total"), 0)
        proxied = await self.api.get("/metrics", token=None, headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(proxied.code, 403)

        def remote(header: bytes | None) -> SimpleNamespace:
            return SimpleNamespace(getClientAddress=lambda: SimpleNamespace(host="203.0.113.9"),
                                   getHeader=lambda name: header if name == b"authorization" else None)

        self.assertFalse(may_see_metrics(remote(None), ""))
        self.assertFalse(may_see_metrics(remote(b"Bearer wrong"), "s3cret"))
        self.assertTrue(may_see_metrics(remote(b"Bearer s3cret"), "s3cret"))

    async def test_thunderbird_autoconfig(self) -> None:
        await self.start(autoconfig_incoming=["imaps://imap.example.com", "pop3://pop.example.com:1110"])
        for path in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"):
            response = await self.api.get(path + "?emailaddress=" + urllib.parse.quote("me@example.com"),
                                          token=None)
            self.assertEqual(response.code, 200)
            provider = ElementTree.fromstring(response.body).find("emailProvider")  # noqa: S314 - our own
            self.assertEqual(provider.findtext("domain"), "example.com")
            servers = [(s.tag, s.get("type"), s.findtext("hostname"), int(s.findtext("port")),
                        s.findtext("socketType"), s.findtext("username"))
                       for s in provider if s.tag.endswith("Server")]
            host = self.harness.service.config.hostname
            # Thunderbird sets up nothing without an incoming server: the operator's come first.
            self.assertEqual(servers, [
                ("incomingServer", "imap", "imap.example.com", 993, "SSL", "%EMAILADDRESS%"),
                ("incomingServer", "pop3", "pop.example.com", 1110, "STARTTLS", "%EMAILADDRESS%"),
                ("outgoingServer", "smtp", host, self.harness.smtps_port, "SSL", "%EMAILADDRESS%"),
                ("outgoingServer", "smtp", host, self.harness.smtp_port, "STARTTLS", "%EMAILADDRESS%"),
            ])

    async def test_unknown_paths_and_methods_are_json(self) -> None:
        await self.start()
        response = await self.api.get("/v2/send")
        self.assertEqual((response.code, response.json), (404, {"error": "Not found"}))
        response = await self.api.get("/v1/send")
        self.assertEqual((response.code, response.error), (405, "Method not allowed"))
        response = await self.api.request("DELETE", "/v1/logfiles")
        self.assertEqual((response.code, response.error), (405, "Method not allowed"))
        response = await self.api.post("/v1/send", raw=b"x" * 100, content_type="text/csv")
        self.assertEqual(response.code, 415)
        self.assertIn("unsupported content type", response.error)


class MetricsTests(unittest.SynchronousTestCase):
    """The metrics themselves, without a service (what /metrics renders: test_metrics)."""

    def test_gauges_and_counters(self) -> None:
        metrics = Metrics()
        metrics.observe(3, {
            "mx.dest.example": {"sessions": 2, "queued": 5, "paused": True, "deferral_rate": 0.25},
            "mx.new.example": {"sessions": 1, "queued": 0, "paused": False, "deferral_rate": None}})
        metrics.count("smtpeter_bounced_total", 2)
        families = _rendered(metrics)
        self.assertEqual([(s.labels, s.value) for s in families["smtpeter_destination_connections"].samples],
                         [({"destination": "mx.dest.example"}, 2), ({"destination": "mx.new.example"}, 1)])
        self.assertEqual([(s.labels, s.value) for s in families["smtpeter_destination_queued"].samples],
                         [({"destination": "mx.dest.example"}, 5), ({"destination": "mx.new.example"}, 0)])
        self.assertEqual([(s.labels, s.value) for s in families["smtpeter_destination_paused"].samples],
                         [({"destination": "mx.dest.example"}, 1), ({"destination": "mx.new.example"}, 0)])
        # No attempts, no ratio (rather than a made-up 0).
        ratios = families["smtpeter_destination_deferral_ratio"].samples
        self.assertEqual([(s.labels, s.value) for s in ratios], [({"destination": "mx.dest.example"}, 0.25)])
        self.assertEqual(families["smtpeter_queue_depth"].samples[0].value, 3)
        self.assertEqual(families["smtpeter_bounced"].samples[0].value, 2)
        metrics.observe(0, {})  # a destination that is gone is gone from the gauges too
        self.assertEqual(_rendered(metrics)["smtpeter_destination_queued"].samples, [])

    def test_a_registry_per_service(self) -> None:
        one, other = Metrics(), Metrics()
        one.count("smtpeter_accepted_total", 5)
        self.assertEqual(_rendered(other)["smtpeter_accepted"].samples[0].value, 0)


def _families(exposition: str) -> dict[str, Metric]:
    """The metric families of a Prometheus exposition, as prometheus_client's own parser reads it."""
    return {family.name: family for family in text_string_to_metric_families(exposition)}


def _rendered(metrics: Metrics) -> dict[str, Metric]:
    return _families(generate_latest(metrics.registry).decode())
