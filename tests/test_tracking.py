"""Click and open tracking: the URL layout, the rewriting step, the redirector and the pixel,
the recorded hits with their bot flags, end to end over real sockets."""

from __future__ import annotations

from twisted.trial import unittest

from smtpeter import tracking_urls
from smtpeter.links import TOKEN_CHARS

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
