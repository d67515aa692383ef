"""Every transform option on, end to end over real sockets: mail submitted over SMTP and over
REST reaches a recording sink with its CSS inlined and its links and images rewritten; an HTTP
client follows each link through the running server; the clicks and opens show up in
/v1/events and the log files with their bot flags."""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from smtpeter.events.logfiles import day_text
from tests.support.http import Client, Response
from tests.support.rig import SENDER_IP, Rig, sleep
from tests.support.sink import free_port_on
from tests.test_images import GIF, ORIGIN_IP, Origin, html_of, image, parsed, tampered

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel link scanner)"
SCANNER_IP = "127.0.0.5"  # mail gateways' addresses, not the reader's
CHECKER_IP = "127.0.0.6"
BOT_SECONDS = 1.0
STYLE = "<style>p { color: #102030; font-size: 15px } .cta { background-color: #ff0010 }</style>"


def newsletter(banner: str, headers: str = "") -> bytes:
    body = (f"<html><head>{STYLE}</head><body><p>Hello, our <a class=\"cta\" "
            "href=\"https://shop.example/offer?size=42&amp;colour=red\">offer</a>.</p>"
            f"<img src=\"{banner}\" alt=\"banner\"><p><a href=\"mailto:help@example.com\">help</a> "
            "<a href=\"https://www.example.com/\">https://www.example.com/</a></p></body></html>")
    text = "Our offer: https://shop.example/text-offer\r\n"
    return (f"From: <news@example.com>\r\nTo: <bob@dest.test>\r\nSubject: News\r\n{headers}"
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
            f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
            f"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{body}\r\n--b--\r\n").encode()


class TrackingEndToEndTests(unittest.TestCase):
    redirect_workers = 2  # clicks and opens answered by processes of their own (redirect_workers.py)

    async def start(self) -> Rig:
        self.http_port = free_port_on("127.0.0.1")
        self.public_url = f"http://127.0.0.1:{self.http_port}"
        rig = self.rig = Rig(self)
        rig.sink("127.0.0.2")
        rig.sink(SENDER_IP)
        self.origin = Origin()
        self.origin.routes["/banner.gif"] = image("image/gif", GIF, cache_control="max-age=600")
        port = reactor.listenTCP(0, Site(self.origin), interface=ORIGIN_IP)
        self.addCleanup(port.stopListening)
        self.banner = f"http://{ORIGIN_IP}:{port.getHost().port}/banner.gif"
        await rig.start(sections={
            "http": {"listen": [f"tcp:{self.http_port}:interface=127.0.0.1"], "public_url": self.public_url,
                     "redirect_workers": self.redirect_workers},
            "tracking": {"allow_networks": [f"{ORIGIN_IP}/32"], "bot_seconds": BOT_SECONDS}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.client = Client(self.public_url, rig.login.token)
        return rig

    async def fetch(self, url: str, method: bytes = b"GET", agent: str = BROWSER,
                    source: str = "127.0.0.1") -> Response:
        """``url`` as written in the mail, never followed (treq would encode parts of it again)."""
        self.assertTrue(url.startswith(self.public_url), url)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await Agent(reactor, pool=pool, bindAddress=(source, 0)).request(
            method, url.encode("ascii"), Headers({b"user-agent": [agent.encode()]}))
        return Response(response.code, response.headers, await treq.content(response))

    async def delivered(self, count: int) -> bytes:
        sink = self.rig.sinks["127.0.0.2"]
        deadline = reactor.seconds() + 15
        while len(sink.received) < count:
            self.assertLess(reactor.seconds(), deadline, "nothing was delivered")
            await sleep(0.05)
        return sink.received[count - 1].data

    async def api_events(self, recipient_id: str, kind: str, count: int) -> list[dict[str, Any]]:
        """The ``kind`` events of a recipient from GET /v1/events, once there are ``count``."""
        deadline = reactor.seconds() + 10
        while True:
            response = await self.client.get(f"/v1/events/messageid/{recipient_id}")
            self.assertEqual(response.code, 200, response.body)
            found = [e["data"] for e in response.json if e["event"] == kind]
            if len(found) >= count or reactor.seconds() > deadline:
                self.assertEqual(len(found), count, found)
                return found
            await sleep(0.2)

    async def logfile(self, name: str) -> list[dict[str, str]]:
        today = day_text(int(reactor.seconds()) // 86400)
        response = await self.client.get(f"/v1/logfiles/{name}.{today}.log/csv/header")
        self.assertEqual(response.code, 200, response.body)
        return list(csv.DictReader(io.StringIO(response.text)))

    def check_transformed(self, sent: bytes, preventscam: bool) -> dict[str, str]:
        """The delivered mail's links by what they were; checks the CSS and everything left alone."""
        message = parsed(sent)
        self.assertEqual(message.defects, [])
        page = html_of(sent)
        self.assertNotIn("<style>", page)
        self.assertIn('<p style="color: #102030; font-size: 15px">Hello', page)
        (offer,) = re.findall(r'<a style="background-color: #ff0010" class="cta" href="([^"]+)">offer</a>',
                              page)
        self.assertIn('href="mailto:help@example.com"', page)
        # preventscam: a link that shows an address goes straight there, and so do the URLs a text
        # part shows.
        shown = re.findall(r'<a href="([^"]+)">https://www.example.com/</a>', page)
        text = message.get_body(("plain",)).get_content()
        if preventscam:
            self.assertEqual(shown, ["https://www.example.com/"])
            self.assertEqual(text.strip(), "Our offer: https://shop.example/text-offer")
        else:
            self.assertTrue(shown[0].startswith(self.public_url + "/c/"), shown)
        (banner,) = re.findall(r'<img src="([^"]+)" alt="banner"', page)
        (honeypot,) = re.findall(r'<div style="display:none[^>]*><a href="([^"]+)"', page)
        (text_url,) = re.findall(r"Our offer: (\S+)", text)
        links = {"offer": html.unescape(offer), "banner": html.unescape(banner),
                 "honeypot": html.unescape(honeypot), "text": text_url}
        if preventscam:
            del links["text"]
        for what, url in links.items():
            self.assertTrue(url.startswith(self.public_url + ("/i/" if what == "banner" else "/c/")), url)
        self.assertNotIn(self.public_url + "/o/", page)  # the banner counts opens: no pixel
        return links

    async def follow(self, links: dict[str, str], recipient_id: str) -> None:
        """A person opens the mail and clicks; machines before them; all recorded with their flags."""
        # Machines as the mail arrives: a gateway checks where a link goes (HEAD), then fetches it
        # with a scanner's user agent; another follows every link, the hidden one first.
        offer = "https://shop.example/offer?size=42&colour=red"
        self.assertEqual((await self.fetch(links["offer"], b"HEAD", source=CHECKER_IP)).code, 302)
        self.assertEqual((await self.fetch(links["offer"], agent=SCANNER, source=CHECKER_IP)).code, 302)
        honeypot = await self.fetch(links["honeypot"], source=SCANNER_IP)
        self.assertEqual(honeypot.code, 200)  # a page of ours
        self.assertEqual((await self.fetch(links["offer"], source=SCANNER_IP)).code, 302)
        machines = [(offer, True, "head"), (offer, True, "user_agent"),
                    (self.public_url + "/", True, "honeypot"), (offer, True, "honeypot")]
        await sleep(BOT_SECONDS + 0.2)
        image_response = await self.fetch(links["banner"])
        self.assertEqual((image_response.code, image_response.body), (200, GIF))
        clicked = [("offer", offer)]
        if "text" in links:
            clicked.append(("text", "https://shop.example/text-offer"))
        for what, target in clicked:
            response = await self.fetch(links[what])
            self.assertEqual(response.code, 302, response.body)
            self.assertEqual(response.headers.getRawHeaders(b"location"), [target.encode()])
            await sleep(1.1)  # a person goes back to the mail between two clicks
        # Tampered, truncated or lengthened tokens: a 404 page, never a redirect; no click recorded.
        token = links["offer"].split("/")[4]
        for bad in (links["offer"].replace(token, tampered(token)), links["offer"].replace(token, token[:-1]),
                    links["offer"].replace(token, token + "A")):
            response = await self.fetch(bad)
            self.assertEqual(response.code, 404, bad)
            self.assertIsNone(response.headers.getRawHeaders(b"location"))

        clicks = await self.api_events(recipient_id, "click", len(machines) + len(clicked))
        flags = sorted((c["destination"], c["bot"], c["bot_reason"]) for c in clicks)
        self.assertEqual(flags, sorted([*machines, *((target, False, "") for _, target in clicked)]))
        person = next(c for c in clicks if not c["bot"] and "text-offer" not in c["destination"])
        self.assertEqual(person["recipient"], "bob@dest.test")
        self.assertEqual(person["ip"], "127.0.0.1")
        self.assertIn(BROWSER, person["headers"])
        (opened,) = await self.api_events(recipient_id, "open", 1)
        self.assertEqual((opened["bot"], opened["protocol"], opened["ip"]), (False, "http", "127.0.0.1"))

        rows = [r for r in await self.logfile("clicks") if r["id"] == recipient_id]
        self.assertEqual(sorted((r["destination"], r["bot"], r["bot_reason"]) for r in rows),
                         sorted((d, "true" if b else "false", reason) for d, b, reason in flags))
        (row,) = [r for r in await self.logfile("opens") if r["id"] == recipient_id]
        self.assertEqual((row["bot"], row["protocol"], row["recipient"]), ("false", "http", "bob@dest.test"))

    async def test_over_smtp_and_rest_with_every_option_on(self) -> None:
        rig = await self.start()
        headers = "".join(f"X-Smtpeter-{name}: true\r\n" for name in
                          ("InlineCSS", "TrackClicks", "TrackOpens", "PreventScam"))
        (smtp_id,) = await rig.send("bob@dest.test", data=newsletter(self.banner, headers))
        await rig.wait_for(smtp_id, "delivered")
        await self.follow(self.check_transformed(await self.delivered(1), preventscam=True), smtp_id)

        response = await self.client.post("/v1/send", json_body={
            "recipient": "bob@dest.test", "mime": newsletter(self.banner).decode(), "inlinecss": True,
            "trackclicks": True, "trackopens": True, "preventscam": False})
        self.assertEqual(response.code, 200, response.body)
        (rest_id,) = response.json
        await rig.wait_for(rest_id, "delivered")
        links = self.check_transformed(await self.delivered(2), preventscam=False)
        self.assertNotEqual(links["offer"], self.check_transformed(await self.delivered(1), True)["offer"])
        await self.follow(links, rest_id)
        # Another account's token finds none of these events.
        other = await rig.storage.create_account("other")
        _, other_token = await rig.storage.create_api_token(other.id)
        response = await Client(self.public_url, other_token).get(f"/v1/events/messageid/{rest_id}")
        self.assertEqual(response.code, 404)

    async def test_without_the_options_nothing_changes(self) -> None:
        rig = await self.start()
        response = await self.client.post("/v1/send", json_body={
            "recipient": "bob@dest.test", "mime": newsletter(self.banner).decode(), "inlinecss": False,
            "trackclicks": False, "trackopens": False})
        (rid,) = response.json
        await rig.wait_for(rid, "delivered")
        page = html_of(await self.delivered(1))
        self.assertIn(STYLE, page)
        self.assertNotIn(self.public_url, page)
        self.assertIn('href="https://shop.example/offer?size=42&amp;colour=red"', page)


class InProcessTrackingEndToEndTests(TrackingEndToEndTests):
    redirect_workers = 0  # the reactor answers them (clicks.TrackingChannel)
