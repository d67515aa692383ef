"""Inline CSS (issue 9): the cascade a browser applies, what stays in <style>, MIME, the step, the CLI.

The Chromium test at the end renders tests/fixtures/inline_css/*.html as a
webmail client shows mail (the <style> elements removed) and wants every
element's computed style equal to the original's; scripts/css_accuracy.py
does the same over ../shared/corpora/templates in `make test`.
"""

from __future__ import annotations

import base64
import http.server
import json
import quopri
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from smtpeter.envelope import Envelope, MessageOptions, Recipient
from smtpeter.mime import tree
from smtpeter.outbound import inline_css
from smtpeter.outbound.inline_css import InlineError, inline_html, inline_message
from smtpeter.outbound.job import StepSettings
from smtpeter.outbound.pipeline import Pipeline
from smtpeter.outbound.steps import MESSAGE_STEPS, run_message_steps
from smtpeter.outbound.workers import Workers
from smtpeter.storage.models import StoredMessage
from tests.support import chromium

FIXTURES = Path(__file__).parent / "fixtures" / "inline_css"
ROOT = Path(__file__).parent.parent


def styles(html: str) -> list[str]:
    """The style attribute of every tag that has one, in order."""
    import re

    return [m.group(1) for m in re.finditer(r'<[a-z0-9]+[^>]*?\sstyle="([^"]*)"', inline_html(html).html)]


def page(css: str, body: str, doctype: str = "<!DOCTYPE html>") -> str:
    return f"{doctype}<html><head><style>{css}</style></head><body>{body}</body></html>"


# -- the cascade ----------------------------------------------------------------------------------


def test_specificity_then_source_order_decide() -> None:
    css = "#t .lead { color: #111 } p.lead { color: red } p { margin: 0 } p { margin-top: 5px }"
    assert styles(page(css, '<div id="t"><p class="lead">x</p></div>')) == [
        "margin: 0; margin-top: 5px; color: #111"]


def test_inline_style_wins_unless_the_sheet_says_important() -> None:
    css = "p { color: red; background: blue !important }"
    (style,) = styles(page(css, '<p style="color: green; background: white">x</p>'))
    # precedence order: the sheet's !important comes last, written without !important
    assert style == "color: green; background: blue"


def test_inline_important_beats_the_sheets_important() -> None:
    css = "p { color: red !important }"
    assert styles(page(css, '<p style="color: green !important">x</p>')) == ["color: green !important"]


def test_a_declaration_browsers_drop_keeps_the_one_before_it() -> None:
    """font-family: line-height: 1 is dropped by a browser: the Arial before it must still be there."""
    css = "p { font-family: Arial } .x { font-family: line-height: 1 } .y { width: 10px } .y { width: 20 }"
    assert styles(page(css, '<p class="x">a</p><p class="y">b</p>')) == [
        "font-family: Arial; font-family: line-height: 1", "font-family: Arial; width: 10px; width: 20"]


def test_overridden_declarations_are_left_out() -> None:
    css = "p { color: red; padding: 1px } .a { color: blue } #b { color: green }"
    assert styles(page(css, '<p class="a" id="b">x</p>')) == ["padding: 1px; color: green"]


def test_media_screen_without_a_condition_is_inlined_others_stay() -> None:
    css = ("@media screen { * { font-family: Verdana !important } } @media only screen and (max-width: 600px)"
           " { p { color: red !important } } @media print { p { color: black } }")
    result = inline_html(page(css, "<p>x</p>"))
    assert '<p style="font-family: Verdana">' in result.html
    assert '<body style="font-family: Verdana">' in result.html
    assert "@media only screen and (max-width: 600px)" in result.html
    assert "@media print" in result.html
    assert "@media screen" not in result.html


def test_pseudo_classes_font_face_and_invalid_selectors_stay_in_style() -> None:
    css = ("@font-face { font-family: X; src: url(x.woff) } a { color: blue } a:hover { color: red }"
           " p::first-line { color: red } p, p:-moz-focusring { color: green }"
           " td:nth-child(2) { color: gray }")
    result = inline_html(page(css, '<a href="#">a</a><p>p</p><table><tr><td>1</td><td>2</td></tr></table>'))
    assert '<a style="color: blue" href="#">' in result.html
    assert "<p>p</p>" in result.html  # Chromium rejects the whole list with :-moz-focusring
    assert "<td>1</td><td style=\"color: gray\">2</td>" in result.html
    for kept in ("@font-face", "a:hover {", "p::first-line {", "p, p:-moz-focusring {"):
        assert kept in result.html
    assert any("-moz-focusring" in line for line in result.report.kept)


def test_is_where_not_and_css_nesting() -> None:
    css = (".card { color: #333; & .title { font-weight: bold } } :is(h3, h4).t { color: navy }"
           " p:where(.soft) { color: #555 } p { color: #444 } p:not(.soft) { margin: 0 }")
    body = '<div class="card"><h3 class="t title">h</h3><p class="soft">s</p><p>p</p></div>'
    assert styles(page(css, body)) == ["color: #333", "color: navy; font-weight: bold", "color: #444",
                                       "color: #444; margin: 0"]


def test_quirks_mode_class_names_ignore_case() -> None:
    html = "<html><head><style>.Title { color: red }</style></head><body><p class=title>x</p></body></html>"
    assert styles(html) == ["color: red"]
    assert styles(page(".Title { color: red }", "<p class=title>x</p>")) == []  # standards mode


def test_implied_elements_get_a_tag_of_their_own() -> None:
    result = inline_html("<style>body { color: red } tbody { font-size: 90% }</style><table><tr><td>x"
                         "</td></tr></table>")
    assert result.html == ('<body style="color: red"><table><tbody style="font-size: 90%"><tr><td>x</td></tr>'
                           "</table>")


# -- what stays as it was ---------------------------------------------------------------------------


def test_everything_but_the_styled_tags_stays_byte_for_byte() -> None:
    original = (FIXTURES / "newsletter.html").read_text()
    result = inline_html(original).html
    assert result.startswith(original[:original.index("<html")])  # the doctype, two lines, as it was
    for kept in ("<!--[if mso]><table><tr><td width=\"600\"><![endif]-->",
                 "Hello&nbsp;{{ name }} &amp; friends", 'href="https://example.com/?utm={{ uid }}"',
                 "Footer &copy; 2026", "<title>Newsletter {{ issue }}"):
        assert kept in result


def test_no_style_means_no_change() -> None:
    html = "<p style='color: red'>x</p>"
    result = inline_html(html)
    assert (result.html, result.changed) == (html, False)


def test_styles_of_unknown_type_templates_and_comments_are_left_alone() -> None:
    html = ('<style type="text/x-less">p { color: red }</style><!-- <style>p { color: blue }</style> -->'
            "<template><style>p { color: green }</style></template><p>x</p>")
    assert inline_html(html).html == html


def test_remote_stylesheets_are_never_fetched() -> None:
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/css")
            self.end_headers()
            self.wfile.write(b"p { color: red }")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        html = (f'<html><head><link rel="stylesheet" href="{base}/a.css">'
                '<link rel=stylesheet href="/etc/passwd">'
                f'<style>@import url("{base}/b.css"); p {{ margin: 0 }}</style>'
                '</head><body><p>x</p></body></html>')
        result = inline_html(html)
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
    assert f'<link rel="stylesheet" href="{base}/a.css">' in result.html
    assert '<p style="margin: 0">' in result.html


# -- attributes for Outlook ------------------------------------------------------------------------


def test_width_height_bgcolor_align_valign_background_attributes() -> None:
    css = (".w { width: 600px !important; height: 50%; background-color: rgb(255, 0, 16); text-align: center;"
           " vertical-align: top; background-image: url('bg.png') } img { width: 120px; height: auto }"
           " .pct { width: 50% } .keep { width: 10px }")
    body = ('<table><tr><td class="w">x</td><td class="keep" width="99">y</td></tr></table>'
            '<img src="a.png"><img class="pct" src="b.png"><p class="w">p</p>')
    html = inline_html(page(css, body)).html
    assert ('<td style="height: 50%; background-color: rgb(255, 0, 16); text-align: center; '
            "vertical-align: top; background-image: url('bg.png'); width: 600px\" "
            'width="600" height="50%" bgcolor="#ff0010" '
            'background="bg.png" align="center" valign="top" class="w">') in html  # no !important in either
    assert '<td style="width: 10px" class="keep" width="99">' in html  # an attribute it has stays
    assert '<img style="width: 120px; height: auto" width="120" src="a.png">' in html
    # no percentages on images
    assert '<img style="height: auto; width: 50%" class="pct" src="b.png">' in html
    assert '<p style="height: 50%; background-color' in html and 'bgcolor="#ff0010" class="w">p' not in html


def test_no_attribute_from_a_value_a_browser_might_drop() -> None:
    css = "td { width: 300; background-color: notacolor; height: 10px }"
    assert '<td style="width: 300; background-color: notacolor; height: 10px" height="10">' in inline_html(
        page(css, "<table><tr><td>x</td></tr></table>")).html


# -- MIME and the outbound step -----------------------------------------------------------------------

HTML_LATIN1 = page("p { color: red }", "<p>Grüße &amp; café</p>").encode("iso-8859-1")


def mime(html_part: bytes, encoding: str, charset: str = "iso-8859-1") -> bytes:
    if encoding == "quoted-printable":
        body = quopri.encodestring(html_part).replace(b"\n", b"\r\n")
    elif encoding == "base64":
        body = base64.encodebytes(html_part).replace(b"\n", b"\r\n")
    else:
        body = html_part
    return (b"From: news@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\npreamble\r\n'
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
            b"--b1\r\nContent-Type: text/html; charset=" + charset.encode() + b"\r\n"
            b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body +
            b"\r\n--b1\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=t.html\r\n\r\n"
            b"<style>p{color:red}</style><p>attached</p>\r\n--b1--\r\nepilogue\r\n")


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_html_parts_are_inlined_in_their_charset_and_encoding(encoding: str) -> None:
    original = mime(HTML_LATIN1, encoding)
    out = inline_message(original)
    before, after = tree.parse(original), tree.parse(out)
    html_before, html_after = before.children[1], after.children[1]
    assert html_after.fields == html_before.fields  # same charset, same transfer encoding
    assert html_after.decoded().decode("iso-8859-1") == page("", '<p style="color: red">Grüße &amp; café</p>'
                                                             ).replace("<style></style>", "")
    for index in (0, 2):  # the text part and the attachment, byte for byte
        assert tree.serialize(after.children[index]) == tree.serialize(before.children[index])
    assert out.startswith(original[:original.index(b"--b1\r\nContent-Type: text/html")])
    assert out.endswith(original[original.index(b"\r\n--b1\r\nContent-Type: text/html\r\nContent-Disp"):])
    if encoding != "8bit":
        assert html_after.body.isascii()


def test_a_us_ascii_part_holding_utf8_is_inlined_as_utf8() -> None:
    original = mime(page("p { color: red }", "<p>café</p>").encode("utf-8"), "8bit", charset="us-ascii")
    html_after = tree.parse(inline_message(original)).children[1]
    assert b'<p style="color: red">caf\xc3\xa9</p>' in html_after.decoded()


def test_a_part_that_cannot_be_decoded_raises_and_the_step_keeps_the_message() -> None:
    broken = mime(page("p{color:red}", "<p>caf\xe9</p>").encode("latin-1"), "8bit", charset="utf-8")
    with pytest.raises(InlineError):
        inline_message(broken)
    stored = stored_message(broken, inlinecss=True)
    prepared = run_message_steps([MESSAGE_STEPS[0]], stored, broken, SETTINGS)
    assert prepared.content == broken
    assert prepared.warnings[0].startswith("inline css: InlineError(")


def test_the_step_is_needed_only_with_inlinecss_and_an_html_part() -> None:
    step = next(s for s in MESSAGE_STEPS if s.name == "inline css")
    assert MESSAGE_STEPS[0] is step  # first, before the line length step re-encodes long lines
    html = mime(HTML_LATIN1, "8bit")
    assert step.needed(stored_message(html, inlinecss=True), html)
    assert not step.needed(stored_message(html, inlinecss=False), html)
    assert not step.needed(stored_message(html), html)
    plain = b"Subject: x\r\n\r\nno html\r\n"
    assert not step.needed(stored_message(plain, inlinecss=True), plain)


SETTINGS = StepSettings("http://track.test", (b"a test key",))


def stored_message(content: bytes, message_id: str = "m1", **options: bool) -> StoredMessage:
    return StoredMessage(message_id, "acct", "smtp", Envelope("news@example.com"), content,
                         MessageOptions(**options), [], 0.0, 86400.0)


class MassMailingTests(unittest.TestCase):
    async def test_one_message_to_many_recipients_is_inlined_once(self) -> None:
        calls: list[int] = []
        real = inline_css.inline_html

        def counting(text: str, extra_css: str = "") -> inline_css.Result:
            calls.append(1)
            return real(text, extra_css)

        self.patch(inline_css, "inline_html", counting)
        workers = Workers(reactor, 0)
        self.addCleanup(workers.stop)
        pipeline = Pipeline(workers, SETTINGS)
        content = mime(HTML_LATIN1, "quoted-printable")
        stored = stored_message(content, inlinecss=True)
        for _ in range(100):
            pipeline.hold(stored)
        contents = set()
        for chunk in range(100):
            recipients = [Recipient(f"r{chunk}-{n}@dest.test") for n in range(100)]
            for batch in await pipeline.jobs(stored, recipients, [f"id{chunk}-{n}" for n in range(100)]):
                contents.add(batch.job.content)
        for _ in range(100):
            pipeline.release(stored.id)
        self.assertEqual(len(calls), 1)  # 10,000 recipients, one inlining
        (prepared,) = contents
        self.assertIn(b'<p style=3D"color: red">', prepared)


# -- the command ------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", "from smtpeter.cli import main; main()", *args],
                          input=stdin, capture_output=True, cwd=ROOT, timeout=60, check=False)


def test_cli_inlines_stdin_to_stdout_and_reports_with_json() -> None:
    html = page("p { color: red } a:hover { color: blue } @media (max-width: 600px) { p { color: green } }"
                " .x { font-family: ; }", "<p>é</p>").encode()
    done = run_cli("inline-css", stdin=html)
    assert done.returncode == 0, done.stderr
    assert done.stdout == inline_html(html.decode()).html.encode()
    done = run_cli("inline-css", "--json", stdin=html)
    report = json.loads(done.stdout)
    assert report["kept"] == ["a:hover", "@media (max-width: 600px)"]
    assert report["dropped"] == [".x: empty declaration 'font-family:'"]
    assert '<p style="color: red">é</p>' in report["html"]


# -- as a webmail client shows it --------------------------------------------------------------------


def test_chromium_sees_the_same_page_without_style_elements() -> None:
    assert chromium.available(), "Chromium and Playwright are needed (scripts/install-system-deps, .[test])"
    with chromium.StyleProbe() as probe:
        for path in sorted(FIXTURES.glob("*.html")):
            original = path.read_text()
            inlined = inline_html(original).html
            result = probe.compare(original, inlined)
            assert result.compat[0] == result.compat[1], path.name
            assert result.differences == [], path.name
            assert result.score == 1.0
            unstyled = probe.compare(original, original)  # the check itself tells the difference
            assert unstyled.score < 0.95, path.name
