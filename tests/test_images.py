"""Open tracking's image proxy, hosted images and the web version, end to end over real sockets.

Messages go through a running smtpeter to a recording sink (tests/support/rig.py); an HTTP
client then loads what the delivered HTML points to through our running server. Image origins
are HTTP servers on 127.0.0.7 and .8: the first is allowed by ``tracking.allow_networks``,
the second is what an attacker would aim at (loopback, refused by default).
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smtpeter import hosting, tracking_urls
from smtpeter.envelope import Envelope, MessageOptions
from smtpeter.ids import new_id
from smtpeter.ingress.http import webversion
from smtpeter.ingress.http.image_fetch import ImageCache, _Entry, allowed_address, freshness
from smtpeter.links import Link, LinkSigner
from smtpeter.outbound import hosted_images
from smtpeter.outbound.job import StepSettings
from smtpeter.storage.models import StoredMessage
from tests.support.harness import Harness
from tests.support.http import Client, Response
from tests.support.rig import SENDER_IP, Rig, sleep
from tests.support.sink import free_port_on

ORIGIN_IP = "127.0.0.7"  # allowed in tracking.allow_networks
PRIVATE_IP = "127.0.0.8"  # never allowed: the SSRF target
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00" \
      b"\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
MAX_BYTES = 50_000
SETTINGS = StepSettings("https://t.example", (b"test key",))
SIGNER = LinkSigner(SETTINGS.link_keys)


def newsletter(html: str, images: tuple[tuple[str, bytes, str], ...] = (("logo@x", PNG, "png"),),
               related_top: bool = False) -> bytes:
    """A message with a text and an HTML version whose images are embedded (multipart/related)."""
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = "bob@dest.test"
    message["Subject"] = "News"
    if related_top:
        message.set_content(html, subtype="html")
        body = message
    else:
        message.set_content("News in text.")
        message.add_alternative(html, subtype="html")
        body = message.get_payload()[1]
    for cid, data, subtype in images:
        body.add_related(data, maintype="image", subtype=subtype, cid=f"<{cid}>")
    return message.as_bytes(policy=email.policy.SMTP)


def parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def stored(data: bytes, images: str | None = "hosted") -> StoredMessage:
    return StoredMessage(new_id(), "account", "api", Envelope("news@example.com"), data,
                         MessageOptions(images=images), [], 0.0, 0.0)


def tampered(token: str) -> str:
    """``token`` with one character in its middle changed (the last one's low bits are padding)."""
    middle = len(token) // 2
    return token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1:]


def html_of(data: bytes) -> str:
    return parsed(data).get_body(("html",)).get_content()


# -- the hosted images step, without sockets --------------------------------------------------------


class HostedImagesStepTests(unittest.TestCase):
    def test_embedded_images_leave_and_the_html_points_to_signed_urls(self) -> None:
        data = newsletter('<p><img src="cid:logo@x"><span style="background:url(&quot;cid:BG@x&quot;)">'
                          '</span><img src="cid:nowhere"></p>',
                          (("logo@x", PNG, "png"), ("bg@x", GIF, "gif"), ("unused@x", GIF, "gif")))
        message = stored(data)
        self.assertTrue(hosted_images.needed(message, data))
        out = hosted_images.run(message, data, SETTINGS)
        result = parsed(out)
        self.assertEqual(result.defects, [])
        self.assertEqual([p.get_content_type() for p in result.walk()],
                         ["multipart/alternative", "text/plain", "multipart/related", "text/html",
                          "image/gif"])
        self.assertEqual(result.get_body(("plain",)).get_content().strip(), "News in text.")
        urls = re.findall(r"https://t\.example/hosted/([^/\"]+)/([^\"&)]+)", html_of(out))
        self.assertEqual([name for _, name in urls], ["logo.png", "bg.gif"])
        links = [hosting.verify_hosted(SIGNER, token, name) for token, name in urls]
        self.assertEqual(links, [Link("hosted", message.id, 0), Link("hosted", message.id, 1)])
        self.assertIn('src="cid:nowhere"', html_of(out))  # no such image: left as it was
        # The image no HTML shows stays in the message.
        self.assertIn("<unused@x>", [p["Content-ID"] for p in result.walk()])
        # Anyone's name for an image: the signature covers it.
        self.assertIsNone(hosting.verify_hosted(SIGNER, urls[0][0], "other.png"))

    def test_a_related_left_with_its_html_alone_becomes_that_html(self) -> None:
        data = newsletter('<img src="cid:logo@x">')
        out = hosted_images.run(stored(data), data, SETTINGS)
        self.assertEqual([p.get_content_type() for p in parsed(out).walk()],
                         ["multipart/alternative", "text/plain", "text/html"])
        # The whole message was the related: it becomes the HTML part, its own header kept.
        data = newsletter('<img src="cid:logo@x">', related_top=True)
        self.assertEqual(parsed(data).get_content_type(), "multipart/related")
        out = hosted_images.run(stored(data), data, SETTINGS)
        result = parsed(out)
        self.assertEqual((result.get_content_type(), result["Subject"], result["MIME-Version"]),
                         ("text/html", "News", "1.0"))
        self.assertEqual(result.defects, [])
        self.assertIn("https://t.example/hosted/", result.get_content())
        self.assertEqual(out[:out.index(b"MIME-Version")], data[:data.index(b"MIME-Version")])

    def test_nothing_to_do(self) -> None:
        data = newsletter('<img src="cid:logo@x">')
        self.assertFalse(hosted_images.needed(stored(data, images="default"), data))
        self.assertFalse(hosted_images.needed(stored(b"Subject: x\r\n\r\nno images\r\n"), b""))
        plain = newsletter('<img src="https://cdn.example/logo.png">')
        self.assertEqual(hosted_images.run(stored(plain), plain, SETTINGS), plain)
        # An HTML part in UTF-16 names its images in bytes we do not rewrite: left alone.
        message = EmailMessage()
        message.set_content('<img src="cid:logo@x">'.encode("utf-16"), maintype="text", subtype="html",
                            params={"charset": "utf-16"})
        message.add_related(PNG, maintype="image", subtype="png", cid="<logo@x>")
        data = message.as_bytes(policy=email.policy.SMTP)
        self.assertEqual(hosted_images.run(stored(data), data, SETTINGS), data)


class ProxyRuleTests(unittest.TestCase):
    def test_which_addresses_may_be_fetched(self) -> None:
        for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"):
            self.assertTrue(allowed_address(address), address)
        for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                        "100.64.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
                        "198.18.0.1", "192.0.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
                        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::7f00:1",
                        "2001:db8::1", "fe80::1%eth0"):
            self.assertFalse(allowed_address(address), address)
        import ipaddress

        allowed = [ipaddress.ip_network("127.0.0.7/32"), ipaddress.ip_network("fd00::/8")]
        self.assertTrue(allowed_address("127.0.0.7", allowed))
        self.assertTrue(allowed_address("fd00::5", allowed))
        self.assertFalse(allowed_address("127.0.0.8", allowed))

    def test_freshness_follows_the_origin(self) -> None:
        from twisted.web.http_headers import Headers

        now = time.time()

        def fresh(**headers: str) -> float | None:
            raw = {name.replace("_", "-").encode(): [value.encode()] for name, value in headers.items()}
            return freshness(Headers(raw), now)

        self.assertEqual(fresh(cache_control="public, max-age=120"), 120)
        self.assertEqual(fresh(cache_control="max-age=120, s-maxage=30"), 30)
        self.assertIsNone(fresh(cache_control="no-store"))
        self.assertIsNone(fresh(cache_control="private, max-age=600"))
        self.assertEqual(fresh(cache_control="no-cache"), 0)
        self.assertEqual(fresh(expires="0"), 0)
        date = email.utils.formatdate(now, usegmt=True)
        self.assertAlmostEqual(fresh(date=date, expires=email.utils.formatdate(now + 300, usegmt=True)), 300)
        modified = email.utils.formatdate(now - 1000, usegmt=True)
        self.assertAlmostEqual(fresh(date=date, last_modified=modified), 100)
        self.assertEqual(fresh(), 3600)

    def test_the_cache_keeps_what_it_may(self) -> None:
        cache = ImageCache(3000)
        from smtpeter.ingress.http.image_fetch import Image

        for key in "abc":
            cache.put(key, _Entry(Image("image/png", b"x" * 1000), "", 1e12))
        self.assertLessEqual(cache.bytes, 3000)
        self.assertIsNone(cache.get("a"))  # the least recently used went
        self.assertIsNotNone(cache.get("c"))
        cache.put("huge", _Entry(Image("image/png", b"x" * 5000), "", 1e12))
        self.assertIsNone(cache.get("huge"))


# -- over real sockets --------------------------------------------------------------------------------


class Origin(Resource):
    """An image server: ``routes`` maps a path to a function of the request; requests are kept."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, Any]] = []
        self.routes: dict[str, Any] = {}

    def render_GET(self, request: Any) -> Any:
        self.requests.append((request.path.decode(), request.requestHeaders))
        route = self.routes.get(request.path.decode())
        if route is None:
            request.setResponseCode(404)
            return b"no such image"
        return route(request)

    def hits(self, path: str) -> int:
        return sum(1 for seen, _ in self.requests if seen == path)


def image(content_type: str, data: bytes, **headers: str) -> Any:
    def route(request: Any) -> bytes:
        request.setHeader(b"content-type", content_type.encode())
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        return data
    return route


class ImageTests(unittest.TestCase):
    async def start(self, backend: str = "sqlite", **tracking: Any) -> Rig:
        self.http_port = free_port_on("127.0.0.1")
        self.public_url = f"http://127.0.0.1:{self.http_port}"
        rig = self.rig = Rig(self)
        rig.sink("127.0.0.2")
        rig.sink(SENDER_IP)
        self.origin, self.private = Origin(), Origin()
        self.origin_port = await self.serve(self.origin, ORIGIN_IP)
        self.private_port = await self.serve(self.private, PRIVATE_IP)
        await rig.start(backend, sections={
            "http": {"listen": [f"tcp:{self.http_port}:interface=127.0.0.1"], "public_url": self.public_url},
            "tracking": {"allow_networks": [f"{ORIGIN_IP}/32"], "image_max_bytes": MAX_BYTES,
                         "image_timeout": 1.5, **tracking}})
        rig.dns.mail_host("dest.test", "mx.dest.test", "127.0.0.2")
        self.client = Client(self.public_url, rig.login.token)
        self.signer = rig.service.api.hosting.signer
        return rig

    async def serve(self, resource: Resource, ip: str) -> int:
        port = reactor.listenTCP(0, Site(resource), interface=ip)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def image_link(self, url: str, recipient_id: str | None = None, position: int = 0) -> str:
        """What the tracking step writes for an image at ``url`` (tracking_urls' layout)."""
        where = tracking_urls.target(url)
        token = self.signer.sign(Link("image", recipient_id or new_id(), position), where.url.encode())
        return tracking_urls.image_url(self.public_url, token, where)

    async def load(self, url: str) -> Response:
        """GET ``url`` exactly as written (treq would percent-encode some of it again)."""
        self.assertTrue(url.startswith(self.public_url), url)
        agent = Agent(reactor, pool=self.client.pool)
        response = await agent.request(b"GET", url.encode("ascii"))
        return Response(response.code, response.headers, await treq.content(response))

    async def delivered(self) -> bytes:
        sink = self.rig.sinks["127.0.0.2"]
        deadline = reactor.seconds() + 15
        while not sink.received:
            self.assertLess(reactor.seconds(), deadline, "nothing was delivered")
            await sleep(0.05)
        return sink.received[-1].data

    def assert_image(self, response: Any, content_type: str, data: bytes) -> None:
        self.assertEqual(response.code, 200, response.body[:200])
        self.assertEqual((response.content_type, response.body), (content_type, data))
        header = response.headers.getRawHeaders
        self.assertEqual(header(b"x-content-type-options"), [b"nosniff"])
        self.assertIn(b"sandbox", header(b"content-security-policy")[0])
        self.assertIn(b"default-src 'none'", header(b"content-security-policy")[0])

    # -- hosted images ---------------------------------------------------------------------------

    async def test_hosted_images_over_smtp_and_rest(self) -> None:
        rig = await self.start()
        html = '<p>Hi</p><img src="cid:logo@x" alt="logo"><img src="cid:pixel@x">'
        data = newsletter(html, (("logo@x", PNG, "png"), ("pixel@x", GIF, "gif")))
        # Over SMTP, asked for with the header; the message is stored as it came.
        with_header = data.replace(b"Subject: News", b"Subject: News\r\nX-Smtpeter-Images: hosted", 1)
        (smtp_id,) = await rig.send("bob@dest.test", data=with_header)
        await rig.wait_for(smtp_id, "delivered")
        sent = await self.delivered()
        await self.check_hosted(sent, smtp_id)
        # Over REST, as an option.
        response = await self.client.post("/v1/send", json_body={
            "recipient": "bob@dest.test", "mime": data.decode(), "images": "hosted",
            "trackclicks": False, "trackopens": False})
        self.assertEqual(response.code, 200, response.body)
        (rest_id,) = response.json
        await rig.wait_for(rest_id, "delivered")
        await self.check_hosted(await self.delivered(), rest_id)

    async def test_another_node_serves_hosted_images_from_the_shared_database(self) -> None:
        keys = {"keys": ["one secret for every node"]}
        rig = await self.start("postgresql", **keys)
        other = Harness(self, "postgresql", server={"hostname": "node2.test"}, tracking=keys,
                        http={"listen": ["tcp:0:interface=127.0.0.1"], "public_url": self.public_url})
        other.url = rig.harness.url  # the same database
        await other.start()
        (rid,) = await rig.send("bob@dest.test", data=newsletter('<img src="cid:logo@x">'),
                                options={"images": "hosted"})
        await rig.wait_for(rid, "delivered")
        (url,) = re.findall(r'src="([^"]+)"', html_of(await self.delivered()))
        path = url[len(self.public_url):]
        first = await Client(other.http_url).get(path, token=None)
        self.assert_image(first, "image/png", PNG)
        # The first load kept the image as a row: this node reads it without the message.
        message_id = (await rig.storage.message_content(rid)).id
        self.assertEqual((await rig.storage.hosted_image(message_id, 0)).data, PNG)
        self.assert_image(await self.load(url), "image/png", PNG)

    async def check_hosted(self, sent: bytes, recipient_id: str) -> None:
        message = parsed(sent)
        self.assertEqual(message.defects, [])
        self.assertEqual([p.get_content_type() for p in message.walk()],
                         ["multipart/alternative", "text/plain", "text/html"])
        urls = re.findall(r'src="([^"]+)"', message.get_body(("html",)).get_content())
        self.assertEqual(len(urls), 2)
        for url, (content_type, data) in zip(urls, (("image/png", PNG), ("image/gif", GIF)), strict=True):
            self.assertTrue(url.startswith(self.public_url + "/hosted/"), url)
            self.assert_image(await self.load(url), content_type, data)
        stored_message = await self.rig.storage.message_content(recipient_id)
        # Loaded once, the images are rows of their own: on every node, without parsing the message.
        row = await self.rig.storage.hosted_image(stored_message.id, 1)
        self.assertEqual((row.content_type, row.data), ("image/gif", GIF))
        response = await self.load(urls[0])
        self.assertIn(b"immutable", response.headers.getRawHeaders(b"cache-control")[0])
        # Tampered: another name, another token, another position.
        token, name = urls[0].rsplit("/", 2)[1:]
        for bad in (f"/hosted/{token}/other.png", f"/hosted/{tampered(token)}/{name}",
                    f"/hosted/{token}", f"/hosted/{'A' * len(token)}/{name}"):
            self.assertEqual((await self.load(self.public_url + bad)).code, 404, bad)

    # -- the image proxy ---------------------------------------------------------------------------

    async def test_images_load_through_the_proxy_and_are_cached(self) -> None:
        await self.start()
        self.origin.routes["/logo.png"] = image("image/png", PNG, cache_control="max-age=60")
        self.origin.routes["/fresh.gif"] = image("image/gif", GIF, cache_control="no-store")
        origin = f"http://{ORIGIN_IP}:{self.origin_port}"
        link = self.image_link(origin + "/logo.png?size=2&x=%20y")
        for _ in range(3):
            response = await self.load(link)
            self.assert_image(response, "image/png", PNG)
            self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(self.origin.hits("/logo.png"), 1)  # one fetch: the rest from the cache
        self.assertEqual(self.origin.requests[0][1].getRawHeaders(b"host"),
                         [f"{ORIGIN_IP}:{self.origin_port}".encode()])
        fresh = self.image_link(origin + "/fresh.gif")
        for _ in range(2):
            self.assert_image(await self.load(fresh), "image/gif", GIF)
        self.assertEqual(self.origin.hits("/fresh.gif"), 2)  # no-store: asked each time
        # A tampered link is a 404 and fetches nothing.
        token = link.split("/")[4]
        for bad in (link.replace(token, tampered(token)), link.replace("logo.png", "other.png"),
                    link.replace("/i/", "/c/"), link + "&more=1"):
            self.assertEqual((await self.load(bad)).code, 404, bad)
        # A link of another kind with a valid signature is not an image link either.
        where = tracking_urls.target(origin + "/logo.png")
        click_token = self.signer.sign(Link("click", new_id(), 0), where.url.encode())
        self.assertEqual((await self.load(tracking_urls.image_url(self.public_url, click_token, where))).code,
                         404)
        self.assertEqual(len(self.origin.requests), 3)

    async def test_tracked_and_hosted_images_of_a_delivered_message(self) -> None:
        rig = await self.start()
        self.origin.routes["/banner.png"] = image("image/png", PNG, cache_control="max-age=600")
        banner = f"http://{ORIGIN_IP}:{self.origin_port}/banner.png"
        html = f'<img src="{banner}" alt="banner"><img src="cid:logo@x">'
        data = newsletter(html, (("logo@x", GIF, "gif"),))
        (rid,) = await rig.send("bob@dest.test", data=data, options={"trackopens": True, "images": "hosted"})
        await rig.wait_for(rid, "delivered")
        tracked, hosted = re.findall(r'<img src="([^"]+)"', html_of(await self.delivered()))[:2]
        self.assertTrue(tracked.startswith(self.public_url + "/i/"), tracked)
        self.assertTrue(hosted.startswith(self.public_url + "/hosted/"), hosted)
        self.assert_image(await self.load(tracked), "image/png", PNG)
        self.assert_image(await self.load(hosted), "image/gif", GIF)
        (opened,) = await self.opens(rid)
        self.assertEqual((opened.data["image"], opened.data["recipient"]), (banner, "bob@dest.test"))
        self.assertEqual(self.origin.hits("/banner.png"), 1)
        # The recipient's link with its token changed anywhere: 404, and no open.
        token = tracked.split("/")[4]
        self.assertEqual((await self.load(tracked.replace(token, tampered(token)))).code, 404)
        await sleep(1.5)
        self.assertEqual(len(await self.opens(rid)), 1)

    async def test_a_changed_image_is_asked_for_with_its_validator(self) -> None:
        await self.start()
        answers = []

        def conditional(request: Any) -> bytes:
            answers.append(request.getHeader(b"if-none-match"))
            if request.getHeader(b"if-none-match") == b'"v1"':
                request.setResponseCode(304)
                return b""
            request.setHeader(b"content-type", b"image/png")
            request.setHeader(b"etag", b'"v1"')
            request.setHeader(b"cache-control", b"no-cache")
            return PNG

        self.origin.routes["/etag.png"] = conditional
        link = self.image_link(f"http://{ORIGIN_IP}:{self.origin_port}/etag.png")
        for _ in range(2):
            self.assert_image(await self.load(link), "image/png", PNG)
        self.assertEqual(answers, [None, b'"v1"'])

    async def test_what_the_proxy_refuses(self) -> None:
        await self.start()
        origin = f"http://{ORIGIN_IP}:{self.origin_port}"
        routes = self.origin.routes
        routes["/big.png"] = image("image/png", b"x" * (MAX_BYTES + 1))

        def streamed(request: Any) -> Any:  # no Content-Length: the size shows only on the way
            request.setHeader(b"content-type", b"image/png")
            for _ in range(MAX_BYTES // 1000 + 5):
                request.write(b"x" * 1000)
            request.finish()
            return NOT_DONE_YET

        def slow(request: Any) -> Any:
            request.setHeader(b"content-type", b"image/png")
            request.write(b"x")
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET  # and nothing more, ever

        routes["/streamed.png"] = streamed
        routes["/slow.png"] = slow
        routes["/page.html"] = image("text/html", b"<script>alert(1)</script>")
        routes["/notype"] = image("", b"GIF89a")
        routes["/svg-is-an-image.svg"] = image("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
        for path, reason in (("/big.png", "larger than"), ("/streamed.png", "larger than"),
                             ("/page.html", "not an image"), ("/notype", "not an image"),
                             ("/missing.png", "answered 404")):
            response = await self.load(self.image_link(origin + path))
            self.assertEqual(response.code, 502, path)
            self.assertIn(reason, response.error)
        started = time.monotonic()
        response = await self.load(self.image_link(origin + "/slow.png"))
        self.assertEqual(response.code, 502)
        self.assertIn("longer than 1.5 s", response.error)
        self.assertLess(time.monotonic() - started, 5)
        svg = await self.load(self.image_link(origin + "/svg-is-an-image.svg"))
        self.assert_image(svg, "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
        # A failure is remembered a while: a broken image in a mass mailing is asked for once.
        await self.load(self.image_link(origin + "/missing.png"))
        self.assertEqual(self.origin.hits("/missing.png"), 1)

    async def test_no_fetch_from_private_addresses(self) -> None:
        rig = await self.start()
        self.private.routes["/secret.png"] = image("image/png", PNG)
        self.origin.routes["/to-private.png"] = lambda request: self.redirect(
            request, f"http://{PRIVATE_IP}:{self.private_port}/secret.png")
        self.origin.routes["/to-name.png"] = lambda request: self.redirect(
            request, f"http://rebound.test:{self.private_port}/secret.png")
        self.origin.routes["/to-allowed.png"] = lambda request: self.redirect(request, "/logo.png")
        self.origin.routes["/logo.png"] = image("image/png", PNG)
        # Names that resolve to a loopback or private address, one of them beside a public one.
        rig.dns.a("rebound.test", PRIVATE_IP)
        rig.dns.a("internal.test", "10.0.0.1", PRIVATE_IP)
        rig.dns.cname("alias.test", "rebound.test")
        port = self.private_port
        for url in (f"http://{PRIVATE_IP}:{port}/secret.png", f"http://127.0.0.1:{self.http_port}/metrics",
                    f"http://rebound.test:{port}/secret.png", f"http://internal.test:{port}/secret.png",
                    f"http://alias.test:{port}/secret.png", f"http://[::1]:{port}/secret.png",
                    f"http://[::ffff:{PRIVATE_IP}]:{port}/secret.png", f"http://2130706440:{port}/secret.png",
                    f"http://0x7f.0.0.8:{port}/secret.png",
                    f"http://{ORIGIN_IP}:{self.origin_port}/to-private.png",
                    f"http://{ORIGIN_IP}:{self.origin_port}/to-name.png"):
            response = await self.load(self.image_link(url))
            self.assertEqual(response.code, 502, url)
        self.assertEqual(self.private.requests, [])
        self.assertEqual(self.origin.hits("/to-private.png"), 1)
        # A redirect within what is allowed is followed.
        self.assert_image(await self.load(self.image_link(f"http://{ORIGIN_IP}:{self.origin_port}"
                                                          "/to-allowed.png")), "image/png", PNG)

    def redirect(self, request: Any, location: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode())
        return b""

    async def test_a_link_to_our_own_hosted_image_is_served_from_storage(self) -> None:
        rig = await self.start()
        (rid,) = await rig.send("bob@dest.test", data=newsletter('<img src="cid:logo@x">'),
                                options={"images": "hosted"})
        await rig.wait_for(rid, "delivered")
        (hosted_url,) = re.findall(r'src="([^"]+)"', html_of(await self.delivered()))
        self.assert_image(await self.load(self.image_link(hosted_url, rid, 3)), "image/png", PNG)
        self.assertEqual(self.origin.requests + self.private.requests, [])
        (opened,) = await self.opens(rid)
        self.assertEqual((opened.data["image"], opened.data["position"]), (hosted_url, 3))

    async def opens(self, recipient_id: str, count: int = 1) -> list[Any]:
        """The open events of a recipient, once there are ``count`` (hits are written in batches)."""
        deadline = reactor.seconds() + 10
        while True:
            found = [e for e in await self.rig.events(recipient_id) if e.type == "open"]
            if len(found) >= count or reactor.seconds() > deadline:
                return found
            await sleep(0.1)

    async def test_every_load_is_an_open_whatever_the_origin_says(self) -> None:
        rig = await self.start()
        (rid,) = await rig.send("bob@dest.test", data=newsletter("<p>no images</p>"))
        await rig.wait_for(rid, "delivered")
        self.origin.routes["/logo.png"] = image("image/png", PNG, cache_control="max-age=600")
        link = self.image_link(f"http://{ORIGIN_IP}:{self.origin_port}/logo.png", rid, 1)
        broken = self.image_link(f"http://{ORIGIN_IP}:{self.origin_port}/gone.png", rid, 2)
        self.assertEqual((await self.load(link)).code, 200)
        self.assertEqual((await self.load(broken)).code, 502)
        rig.clock.advance(11)  # a client's loads of one message's images within seconds are one open
        self.assertEqual((await self.load(link)).code, 200)  # from the cache: still an open
        opens = await self.opens(rid, 2)
        self.assertEqual(len(opens), 2, [e.data for e in opens])
        self.assertEqual(self.origin.hits("/logo.png"), 1)
        self.assertTrue(opens[0].data["url"].startswith(self.public_url + "/i/"), opens[0].data)

    # -- the web version --------------------------------------------------------------------------

    async def test_web_version(self) -> None:
        rig = await self.start()
        html = ('<h1>Hello {$name}</h1><a href="{$webversion}">View in your browser</a>'
                '<img src="cid:logo@x"><script>alert(1)</script>')
        data = newsletter(html).decode()
        response = await self.client.post("/v1/send", json_body={
            "recipients": {"bob@dest.test": {"name": "Bob"}}, "mime": data, "data": {}, "images": "default",
            "trackclicks": False, "trackopens": False})
        self.assertEqual(response.code, 200, response.body)
        (rid,) = response.json
        await rig.wait_for(rid, "delivered")
        delivered_html = html_of(await self.delivered())
        (url,) = re.findall(r'href="([^"]+)"', delivered_html)
        self.assertTrue(url.startswith(self.public_url + "/webversion/"), url)
        self.assertEqual(hosting.verify_webversion(self.signer, url.rsplit("/", 1)[1]),
                         Link("webversion", rid, 0))
        page = await self.load(url)
        self.assertEqual((page.code, page.content_type), (200, "text/html; charset=utf-8"))
        csp = page.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"sandbox", csp)
        self.assertNotIn(b"allow-scripts", csp)
        self.assertNotIn(b"script-src", csp)
        self.assertIn(b"default-src 'none'", csp)
        self.assertEqual(page.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(page.headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        self.assertIn("<h1>Hello Bob</h1>", page.text)
        self.assertIn(f'href="{url}"', page.text)
        # Its embedded image is shown from its hosted URL.
        (image_url,) = re.findall(r'<img src="([^"]+)"', page.text)
        self.assert_image(await self.load(image_url), "image/png", PNG)
        token = url.rsplit("/", 1)[1]
        for bad in (url.replace(token, tampered(token)), url + "x",
                    self.public_url + "/webversion/" + "A" * 43, self.public_url + "/webversion/"):
            self.assertEqual((await self.load(bad)).code, 404, bad)
        # A message without HTML shows its text.
        text = webversion.render(stored(b"Subject: x\r\n\r\n<b>plain</b> text\r\n"), None)
        self.assertIn("&lt;b&gt;plain&lt;/b&gt; text", text)

    async def test_post_is_not_allowed(self) -> None:
        await self.start()
        link = self.image_link(f"http://{ORIGIN_IP}:{self.origin_port}/logo.png")
        response = await self.client.post(link[len(self.public_url):], token=None, raw=b"")
        self.assertEqual(response.code, 405)


