"""Headless Chromium as a webmail client sees mail: computed styles with and without ``<style>``.

``StyleProbe`` opens Debian's Chromium (``/usr/bin/chromium``, driven by
Playwright, whose own browser download is never used) with the network
blocked: the page is served from a made-up origin and every other request is
aborted, so remote images, fonts and stylesheets never load, in the original
and the inlined page alike. ``compare`` loads the original page with its
``<style>`` elements, the inlined page with all of them removed (as webmail
clients that strip ``<style>`` do), and compares every element's computed
style, element by element in document order: the share of (element,
property) pairs that are equal is the score.

The original is judged as the design meant it for a client that cannot
evaluate media features: ``@media`` rules with a condition (``min-width``,
``prefers-color-scheme``, ...) are switched off in it, since such a rule
holds on one screen and not on another, and the inliner keeps them in
``<style>`` for the clients that can evaluate them. The ``strict`` score
compares with the original as the 900-pixel viewport shows it, conditions
and all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CHROMIUM = os.environ.get("SMTPETER_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 900, "height": 1200}
ORIGIN = "http://inliner.invalid"
# Flags for a closed network: no background connections, no GPU, no sandbox (we run as root in CI).
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage"]

# What a reader sees of an element: its box, text and colours. Longhands only (shorthands are
# serialisations of these); margin-left/right are used values, so auto margins depend on layout.
PROPERTIES = (
    "display", "visibility", "opacity", "float", "clear", "position", "overflow-x", "overflow-y",
    "box-sizing", "width", "height", "min-width", "max-width", "min-height", "max-height",
    "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border-top-width", "border-right-width", "border-bottom-width", "border-left-width",
    "border-top-style", "border-right-style", "border-bottom-style", "border-left-style",
    "border-top-color", "border-right-color", "border-bottom-color", "border-left-color",
    "border-top-left-radius", "border-top-right-radius", "border-bottom-right-radius",
    "border-bottom-left-radius", "border-collapse", "border-spacing", "table-layout",
    "color", "background-color", "background-image", "background-repeat", "background-position",
    "background-size", "font-family", "font-size", "font-weight", "font-style", "font-variant",
    "line-height", "letter-spacing", "word-spacing", "text-align", "text-decoration-line",
    "text-decoration-color", "text-decoration-style", "text-transform", "text-indent", "white-space",
    "word-break", "overflow-wrap", "vertical-align", "list-style-type", "list-style-position",
    "box-shadow", "text-shadow", "cursor", "outline-style", "-webkit-text-size-adjust",
)

_COLLECT = """(args) => {
    const [props, strip, unconditional] = args;
    if (strip) document.querySelectorAll('style').forEach(e => e.remove());
    const switchOff = (rules) => {
        for (const rule of rules) {
            if (rule instanceof CSSMediaRule && rule.media.mediaText.includes('(')) {
                rule.media.mediaText = 'not all';
            } else if (rule.cssRules) {
                switchOff(rule.cssRules);
            }
        }
    };
    if (unconditional) {
        document.querySelectorAll('style').forEach(e => e.sheet && switchOff(e.sheet.cssRules));
    }
    const out = [];
    for (const el of document.querySelectorAll('*')) {
        if (el.closest('head')) continue;
        const tag = el.tagName.toLowerCase();
        if (tag === 'style' || tag === 'script') continue;
        const cs = getComputedStyle(el);
        out.push([tag, props.map(p => cs.getPropertyValue(p))]);
    }
    return [document.compatMode, out];
}"""


@dataclass
class Comparison:
    equal: int = 0
    total: int = 0
    compat: tuple[str, str] = ("", "")
    # (element index, tag, property, original value, inlined value), the first few
    differences: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    strict: Comparison | None = None  # against the original with its conditional @media rules

    @property
    def score(self) -> float:
        return self.equal / self.total if self.total else 1.0


class StyleProbe:
    """One browser for many pages; use as a context manager."""

    def __init__(self, properties: tuple[str, ...] = PROPERTIES) -> None:
        self.properties = list(properties)

    def __enter__(self) -> StyleProbe:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=_FLAGS)
            self._context = self._browser.new_context(viewport=VIEWPORT, java_script_enabled=True,
                                                      service_workers="block")
            self._context.route("**/*", self._route)
            self._page = self._context.new_page()
        except BaseException:
            self._playwright.stop()
            raise
        self._html = b""
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()

    def _route(self, route: object) -> None:
        request = route.request  # type: ignore[attr-defined]
        if request.url == ORIGIN + "/mail.html":
            route.fulfill(status=200, body=self._html,  # type: ignore[attr-defined]
                          headers={"content-type": "text/html; charset=utf-8"})
        else:
            route.abort()  # type: ignore[attr-defined]

    def styles(self, html: str, strip_style: bool,
               unconditional: bool = False) -> tuple[str, list[tuple[str, list[str]]]]:
        """The document's mode and (tag, computed values) of every element in order;
        ``unconditional``: with its ``@media`` rules that have a condition switched off."""
        self._html = html.encode("utf-8")
        self._page.goto(ORIGIN + "/mail.html", wait_until="load")
        compat, elements = self._page.evaluate(_COLLECT, [self.properties, strip_style, unconditional])
        return compat, [(tag, values) for tag, values in elements]

    def compare(self, original: str, inlined: str, keep: int = 20) -> Comparison:
        mode_a, designed = self.styles(original, strip_style=False, unconditional=True)
        _, shown = self.styles(original, strip_style=False)
        mode_b, after = self.styles(inlined, strip_style=True)
        result = compare_styles(designed, after, self.properties, (mode_a, mode_b), keep)
        result.strict = compare_styles(shown, after, self.properties, (mode_a, mode_b), keep)
        return result


def compare_styles(before: list[tuple[str, list[str]]], after: list[tuple[str, list[str]]],
                   properties: list[str], compat: tuple[str, str] = ("", ""), keep: int = 20) -> Comparison:
    """Pairs equal between two pages; elements are matched in document order, and an element
    missing on one side (or a different tag) counts every property as different."""
    result = Comparison(compat=compat)
    per_element = len(properties)
    result.total = max(len(before), len(after)) * per_element
    for index, ((tag_a, values_a), (tag_b, values_b)) in enumerate(zip(before, after, strict=False)):
        if tag_a != tag_b:
            continue
        for name, a, b in zip(properties, values_a, values_b, strict=True):
            if a == b:
                result.equal += 1
            elif len(result.differences) < keep:
                result.differences.append((index, tag_a, name, a, b))
    return result


def available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK)
