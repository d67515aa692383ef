"""Click and open tracking: the URL layout, the rewriting step, the redirector and the pixel,
the recorded hits with their bot flags, end to end over real sockets."""

from __future__ import annotations

import email
import email.policy
import html
import re
import time

from twisted.trial import unittest

from smtpeter import tracking_urls
from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.events.bots import HONEYPOT_POSITION
from smtpeter.ids import new_id
from smtpeter.links import TOKEN_CHARS, LinkSigner
from smtpeter.mime import tree
from smtpeter.mime.lines import has_long_line
from smtpeter.outbound import steps as outbound_steps
from smtpeter.outbound import tracking
from smtpeter.outbound.job import OutboundJob, StepSettings
from smtpeter.storage.models import StoredMessage

TOKEN = "A" * TOKEN_CHARS


class URLLayoutTests(unittest.TestCase):
    def round_trip(self, url: str) -> tracking_urls.Target:
        where = tracking_urls.target(url)
        assert where is not None, url
        ours = tracking_urls.click_url("https://t.example", TOKEN, where)
        request_target = ours[len("https://t.example"):].partition("#")[0].encode()
        self.assertEqual(tracking_urls.parse_link(request_target), ("c", TOKEN, where.url))
        return where

    def test_the_path_stays_readable(self) -> None:
        where = self.round_trip("https://www.example.com/offer/shoes?size=42&colour=red#top")
        self.assertEqual(tracking_urls.click_url("https://t.example", TOKEN, where),
                         f"https://t.example/c/{TOKEN}/https/www.example.com/offer/shoes?size=42&colour=red#top")
        self.assertEqual(where.url, "https://www.example.com/offer/shoes?size=42&colour=red")

    def test_targets_are_what_a_browser_would_send(self) -> None:
        self.assertEqual(self.round_trip("https://x.test/a b/ü?q=it's <x>#a b").url,
                         "https://x.test/a%20b/%C3%BC?q=it%27s%20%3Cx%3E")
        self.assertEqual(self.round_trip(" HTTP://X.test/a\\b\t\n ").url, "http://X.test/a/b")
        self.assertEqual(self.round_trip("http://example.com?q=1").url, "http://example.com?q=1")
        self.assertEqual(self.round_trip("https://u:p@[::1]:8080/p").url, "https://u:p@[::1]:8080/p")

    def test_paths_a_browser_would_change_are_carried_opaquely(self) -> None:
        for url in ("https://x.test/a/../b", "https://x.test/a/%2E/b", "https://x.test//a", "http://../x"):
            where = self.round_trip(url)
            self.assertTrue(where.path.startswith("~/"), where)

    def test_what_is_not_tracked(self) -> None:
        for url in ("mailto:a@example.com", "tel:+31201234567", "#top", "/relative", "//x.test/a",
                    "javascript:alert(1)", "http:/x", "https://", "ftp://x.test/", "https://a b/"):
            self.assertIsNone(tracking_urls.target(url), url)

    def test_foreign_request_targets(self) -> None:
        good = f"/c/{TOKEN}/https/x.test/a".encode()
        self.assertIsNotNone(tracking_urls.parse_link(good))
        for uri in (good[:-len(b"/https/x.test/a")], f"/c/{TOKEN}/ftp/x.test/a".encode(),
                    f"/c/{TOKEN}/https//a".encode(), f"/x/{TOKEN}/https/x.test/a".encode(),
                    f"/c/{TOKEN[:-1]}/https/x.test/a".encode(), f"/c/{TOKEN}/~/%%%".encode(),
                    f"/c/{TOKEN}/https/x.test/\xff".encode("latin-1")):
            self.assertIsNone(tracking_urls.parse_link(uri), uri)
        self.assertEqual(tracking_urls.parse_link(b"/t" + good, prefix=b"/t")[1], TOKEN)
        self.assertIsNone(tracking_urls.parse_link(good, prefix=b"/t"))

    def test_images_and_the_pixel(self) -> None:
        where = tracking_urls.target("https://cdn.example/logo.png#x")
        url = tracking_urls.image_url("https://t.example", TOKEN, where)
        self.assertEqual(url, f"https://t.example/i/{TOKEN}/https/cdn.example/logo.png")
        self.assertEqual(tracking_urls.parse_image_url(url[len("https://t.example"):].encode()),
                         (TOKEN, "https://cdn.example/logo.png"))
        self.assertIsNone(tracking_urls.parse_image_url(f"/c/{TOKEN}/https/cdn.example/logo.png".encode()))
        pixel = tracking_urls.pixel_url("https://t.example", TOKEN)
        self.assertEqual(pixel, f"https://t.example/o/{TOKEN}.gif")
        self.assertEqual(tracking_urls.parse_pixel(f"/o/{TOKEN}.gif?x=1".encode()), TOKEN)
        self.assertIsNone(tracking_urls.parse_pixel(f"/o/{TOKEN}.png".encode()))


# -- the rewriting step ---------------------------------------------------------------------------------

BASE = "https://t.example"
KEYS = (b"tracking test key",)
SIGNER = LinkSigner(list(KEYS))
OURS = re.compile(r"https://t\.example(/[^\"'\s<>]+)")


def mime(*parts: bytes, headers: bytes = b"") -> bytes:
    """A message of ``parts`` (each its own header and body) in a multipart/alternative."""
    head = (b"From: <news@example.com>\r\nTo: <someone@example.net>\r\nSubject: offers\r\n"
            b"MIME-Version: 1.0\r\n" + headers)
    if len(parts) == 1:
        return head + parts[0]
    body = b"".join(b"--BOUNDARY\r\n" + part + b"\r\n" for part in parts)
    return (head + b"Content-Type: multipart/alternative; boundary=BOUNDARY\r\n\r\n" + body
            + b"--BOUNDARY--\r\n")


def html_part(html_text: str, encoding: str = "quoted-printable", charset: str = "utf-8") -> bytes:
    data = html_text.encode(charset)
    body = {"quoted-printable": tree.encode_quoted_printable, "base64": tree.encode_base64}.get(
        encoding, lambda raw: raw)(data)
    return (f"Content-Type: text/html; charset={charset}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
            .encode() + body)


def text_part(text: str) -> bytes:
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()


def stored(data: bytes, **options: bool) -> StoredMessage:
    values = {"trackclicks": True, "trackopens": True, "preventscam": False, **options}
    return StoredMessage(new_id(), "account", "smtp", Envelope("news@example.com"), data,
                         MessageOptions(**values), [], 0.0, 0.0)


def tracked(data: bytes, recipient_id: str | None = None, **options: bool) -> tuple[bytes, str]:
    """The copy of ``data`` one recipient gets, and that recipient's id."""
    recipient_id = recipient_id or new_id()
    message = stored(data, **options)
    job = OutboundJob(message, message.envelope.with_recipients([Recipient("someone@example.net")]), data,
                      (recipient_id,))
    return tracking.run(job, StepSettings(BASE, KEYS)).content, recipient_id


def bodies(data: bytes) -> dict[str, str]:
    """The decoded text of each text part, by content type."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    return {part.get_content_type(): part.get_content().replace("\r\n", "\n") for part in parsed.walk()
            if part.get_content_maintype() == "text" and not part.is_attachment()}


def followed(text: str, recipient_id: str) -> list[tuple[str, str, int]]:
    """Every link of ours in ``text``: (kind, where it leads, position), each token checked."""
    found = []
    for path in OURS.findall(html.unescape(text)):
        path = tracking._trim(path).partition("#")[0]  # as a mail client finds URLs in text
        if not path.startswith(("/c/", "/i/", "/o/")):
            continue  # our own, not a tracking link (a hosted image, the web version)
        if path.startswith("/o/"):
            link = SIGNER.verify(tracking_urls.parse_pixel(path.encode()))
            target = ""
        else:
            _, token, target = tracking_urls.parse_link(path.encode())
            link = SIGNER.verify(token, target.encode())
        assert link is not None and link.recipient_id == recipient_id, path
        found.append((link.kind, target, link.position))
    return found


PAGE = """<!doctype html>
<html><head><title>Offers</title><style>a { color: red }</style></head>
<body class="x">
<p>Hello, <a href="https://www.example.com/offer?a=1&amp;b=2#top" class=x>see the offer</a>,
<a href="mailto:info@example.com">mail us</a>, <a href="tel:+3120123">call</a>, <a href="#top">up</a>,
<a href="/relative">relative</a>, <a href='https://www.example.com/x?copy=1&copy=2'>legacy entity</a>.</p>
<a href="https://button.example/go"><table><tr><td>A button, its table inside the link</td></tr></table></a>
<img src="https://cdn.example/logo.png" alt="logo"><img src="cid:part1@example.com">
<!--[if mso]><v:roundrect href="https://button.example/outlook">Outlook's button</v:roundrect><![endif]-->
<script>var s = "<a href='https://not.a.link/'>";</script>
<p><a href="https://www.example.com/account/unsubscribe?u=1">Stop these mails</a>
<a href="https://lists.example/u/77">Manage</a> <a href="https://www.example.com/x">Afmelden</a>
<a href="https://t.example/webversion/abc">our own</a></p>
</body></html><p>after the end</p>
"""


class RewritingTests(unittest.TestCase):
    def test_links_and_images_are_signed_for_the_recipient(self) -> None:
        data = mime(html_part(PAGE), headers=b"List-Unsubscribe: <https://lists.example/u/77>\r\n")
        out, rid = tracked(data)
        page = bodies(out)["text/html"]
        self.assertEqual(followed(page, rid), [
            ("click", BASE + "/", HONEYPOT_POSITION),
            ("click", "https://www.example.com/offer?a=1&b=2", 1),
            ("click", "https://www.example.com/x?copy=1&copy=2", 2),  # no entity inside a URL
            ("click", "https://button.example/go", 3),
            ("image", "https://cdn.example/logo.png", 4),
            ("click", "https://button.example/outlook", 5),
        ])
        self.assertIn(f'{BASE}/c/', page)
        self.assertIn("/https/www.example.com/offer?a=1&amp;b=2#top\" class=x>see the offer</a>", page)
        # Only the URLs changed: put the originals back and it is the page again, but for the honeypot.
        restored = re.sub(r'<div style="display:none[^>]*><a href="[^"]*"[^>]*>&#8203;</a></div>', "", page)
        for original in ('"https://www.example.com/offer?a=1&amp;b=2#top"', "'https://www.example.com/x?copy=1&copy=2'",
                         '"https://button.example/go"', '"https://cdn.example/logo.png"',
                         '"https://button.example/outlook"'):
            restored = re.sub(r'"https://t\.example/[ci]/[A-Za-z0-9_-]+/[^"]*"', original, restored, count=1)
        self.assertEqual(restored.replace("\r\n", "\n"), PAGE)

    def test_recipients_get_their_own_tokens(self) -> None:
        data = mime(html_part(PAGE))
        first, first_id = tracked(data)
        second, second_id = tracked(data)
        self.assertNotEqual(first, second)
        self.assertEqual([(k, t) for k, t, _ in followed(bodies(first)["text/html"], first_id)],
                         [(k, t) for k, t, _ in followed(bodies(second)["text/html"], second_id)])

    def test_a_pixel_where_no_image_is_tracked(self) -> None:
        out, rid = tracked(mime(html_part('<html><body><p><a href="https://x.example/">x</a> '
                                          '<img src="cid:logo"></p></body></html>')))
        page = bodies(out)["text/html"]
        self.assertEqual([kind for kind, _, _ in followed(page, rid)], ["click", "click", "open"])
        self.assertTrue(page.endswith('style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
                                      '</body></html>'))
        opens_only, rid = tracked(mime(html_part("<p>No body tag</p>")), trackclicks=False)
        self.assertEqual([kind for kind, _, _ in followed(bodies(opens_only)["text/html"], rid)], ["open"])
        self.assertTrue(bodies(opens_only)["text/html"].startswith("<p>No body tag</p><img src="))

    def test_options(self) -> None:
        data = mime(text_part("Read https://www.example.com/a.\r\n"), html_part(PAGE))
        clicks_only, rid = tracked(data, trackopens=False)
        kinds = [kind for kind, _, _ in followed(bodies(clicks_only)["text/html"], rid)]
        self.assertNotIn("image", kinds)
        self.assertNotIn("open", kinds)
        self.assertIn("https://cdn.example/logo.png", bodies(clicks_only)["text/html"])
        opens_only, rid = tracked(data, trackclicks=False)
        self.assertEqual([kind for kind, _, _ in followed(bodies(opens_only)["text/html"], rid)], ["image"])
        self.assertEqual(bodies(opens_only)["text/plain"], "Read https://www.example.com/a.\n")
        nothing, _ = tracked(data, trackclicks=False, trackopens=False)
        self.assertEqual(nothing, data)

    def test_preventscam_leaves_links_that_show_an_address(self) -> None:
        page = ('<a href="https://www.bank.example/login">www.bank.example</a> '
                '<a href="https://bank.example/x">https://bank.example/x</a> '
                '<a href="https://bank.example/y"> bank.example/y </a> '
                '<a href="https://bank.example/z">Log in</a>')
        data = mime(text_part("See https://www.bank.example/login\r\n"), html_part(page))
        out, rid = tracked(data, preventscam=True)
        self.assertEqual([t for k, t, _ in followed(bodies(out)["text/html"], rid) if k == "click"],
                         [BASE + "/", "https://bank.example/z"])  # the honeypot opens the body
        self.assertEqual(bodies(out)["text/plain"], "See https://www.bank.example/login\n")  # text is the URL
        out, rid = tracked(data)
        self.assertEqual(len([k for k, _, _ in followed(bodies(out)["text/html"], rid) if k == "click"]), 5)

    def test_urls_in_text(self) -> None:
        text = ("Offer: https://www.example.com/offer?a=1&b=2.\r\n"
                "(See https://www.example.com/wiki/Foo_(bar)), <https://www.example.com/angle>\r\n"
                "To unsubscribe: https://www.example.com/u?x=1\r\n"
                "mailto:info@example.com and http://plain.example\r\n")
        out, rid = tracked(mime(text_part(text)))
        plain = bodies(out)["text/plain"]
        self.assertEqual([t for _, t, _ in followed(plain, rid)], [
            "https://www.example.com/offer?a=1&b=2", "https://www.example.com/wiki/Foo_(bar)",
            "https://www.example.com/angle", "http://plain.example"])
        self.assertIn("/https/www.example.com/offer?a=1&b=2.\n", plain)
        self.assertIn("/https/www.example.com/wiki/Foo_(bar)), <", plain)
        self.assertIn("To unsubscribe: https://www.example.com/u?x=1\n", plain)

    def test_a_token_split_by_a_soft_line_break(self) -> None:
        """Quoted-printable wraps long lines: tokens that fall across a soft line break still work."""
        page = " ".join(f'<a href="https://www.example.com/{"p" * n}">{n}</a>' for n in range(60))
        data = mime(html_part(page))
        out, rid = tracked(data)
        encoded = out.split(b"quoted-printable\r\n\r\n", 1)[1]
        self.assertTrue(all(len(line) <= 76 for line in encoded.split(b"\r\n")))
        targets = [t for k, t, _ in followed(bodies(out)["text/html"], rid) if k == "click"]
        self.assertEqual(targets, [BASE + "/"] + [f"https://www.example.com/{'p' * n}" for n in range(60)])

    def test_transfer_encodings_and_charsets(self) -> None:
        page = '<p>Caf\u00e9 <a href="https://www.example.com/caf\u00e9">menu</a></p>'
        for encoding, charset in (("base64", "utf-8"), ("8bit", "utf-8"), ("quoted-printable", "iso-8859-1"),
                                  ("7bit", "us-ascii")):
            source = page if charset != "us-ascii" else page.replace("\u00e9", "e")
            out, rid = tracked(mime(html_part(source, encoding, charset)))
            parsed = email.message_from_bytes(out, policy=email.policy.default)
            self.assertEqual(parsed.get_content_charset(), charset)
            content = parsed.get_content()
            targets = [t for k, t, _ in followed(content, rid) if k == "click"]
            self.assertEqual(targets[1], "https://www.example.com/caf%C3%A9" if charset != "us-ascii"
                             else "https://www.example.com/cafe", encoding)
            self.assertIn("Caf\u00e9 <a" if charset != "us-ascii" else "Cafe <a", content)
        # 7bit with a line that a longer link pushes past 998 octets: quoted-printable now.
        long_line = '<a href="https://www.example.com/">x</a>' + "y" * 950
        out, _ = tracked(mime(html_part(long_line, "7bit", "us-ascii")))
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable\r\n", out)
        self.assertFalse(has_long_line(out, 998))
        # A charset that does not write ASCII as ASCII is left alone.
        utf16 = mime(html_part('<a href="https://www.example.com/">x</a>', "base64", "utf-16"))
        self.assertEqual(tracked(utf16)[0], utf16)

    def test_attachments_and_other_parts_are_left_alone(self) -> None:
        attachment = (b'Content-Type: text/html\r\nContent-Disposition: attachment; filename="a.html"\r\n\r\n'
                      b'<a href="https://www.example.com/">x</a>')
        data = mime(text_part("no links"), attachment)
        self.assertEqual(tracked(data, trackopens=False)[0], data)

    def test_the_message_is_parsed_once_for_all_its_recipients(self) -> None:
        """10,000 recipients: one template, then a substitution each; every copy its own."""
        made = []
        original = tracking.make_template
        self.patch(tracking, "make_template", lambda *args: made.append(1) or original(*args))
        data = mime(text_part("See https://www.example.com/a\r\n"), html_part(PAGE))
        message = stored(data)
        ids = [new_id() for _ in range(10_000)]
        jobs = [OutboundJob(message, message.envelope.with_recipients([Recipient(f"r{i}@example.net")]), data,
                            (rid,)) for i, rid in enumerate(ids)]
        started = time.process_time()
        done, warnings = outbound_steps.run_recipient_steps(outbound_steps.RECIPIENT_STEPS, jobs,
                                                            StepSettings(BASE, KEYS))
        seconds = time.process_time() - started
        self.assertEqual((len(made), warnings), (1, []))
        self.assertEqual(len({job.content for job in done}), 10_000)
        for job in done[::2000]:
            self.assertEqual(len(followed(bodies(job.content)["text/html"], job.recipient_ids[0])), 7)
        self.assertLess(seconds, 20)
        print(f"\n10,000 recipients: {seconds:.2f} s of CPU ({seconds * 100:.0f} µs each)")
