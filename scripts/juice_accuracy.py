#!/usr/bin/env python3
"""Our inliner (and css-inline alone) over Juice's test cases, compared by meaning.

    scripts/juice_accuracy.py ../shared/corpora/juice [--inliner ours,css-inline] [--min-pass N]

Each case is an HTML page, CSS (``NAME.css``, or the page's own ``<style>``
for ``juice-content/``) and the page Juice makes of them (``NAME.out``). A
case passes when every element (in document order, ``<style>`` left out)
has the same tag, the same winning value for every CSS property of its
``style`` attribute (shorthands expanded to longhands, the last declaration
of a property winning, ``!important`` before the rest; values compared
without case, quote and white-space differences) and the same ``width``,
``height``, ``bgcolor``, ``align``, ``valign`` and ``background`` attributes
(values browsers ignore, such as ``width="auto"``, count as absent). Cases
that test what Juice alone does are skipped, each with its reason (SKIPS).
Exits 1 when ours passes fewer than ``--min-pass`` cases or fewer than
css-inline's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import lxml.html

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpeter.outbound.inline_css import css_tokens, inline_html, parse_declarations, split_commas

SKIPS = {
    "juice-content/embed": "reads a <link data-embed> stylesheet from disk: "
                           "we never load stylesheets",
    "juice-content/relative-url": "fetches a remote stylesheet: we never fetch "
                                  "(no requests on a sender's behalf)",
    "juice-content/pseudo-elements": "inlinePseudoElements: Juice adds <span> elements for ::before/::after",
    "juice-content/pseudo-elements-and-width-attr": "inlinePseudoElements: Juice adds <span> elements",
    "css-variables": "resolveCSSVariables: Juice writes var() values resolved; "
                     "we inline the custom properties",
}

# Cases where Juice's expected page is not what a browser shows: compared and counted as failed
# when we differ, with the reason printed.
BY_DESIGN = {
    "juice-content/media-preserve": "@media all always applies, so we inline it "
                                    "(body color blue in a browser)",
    "ignore-pseudos": "a:link matches every link with an href in a browser, so the link is bold",
    "pseudo-specificity": "Juice's specificity: a browser gives .a:first-child (0,2,0) precedence over "
                          ".a:not(div) and span.b (0,1,1), so background blue and padding 10px",
}

_ATTRIBUTES = ("width", "height", "bgcolor", "align", "valign", "background")
_SIDES = ("top", "right", "bottom", "left")
_CORNERS = ("top-left", "top-right", "bottom-right", "bottom-left")
_BORDER_STYLES = {"none", "hidden", "dotted", "dashed", "solid", "double", "groove", "ridge",
                  "inset", "outset"}


def _words(value: str) -> list[str]:
    """Top-level space-separated components of a value."""
    out: list[str] = []
    for part in split_commas(css_tokens(value)):
        if out:
            out[-1] += ","
        current = ""
        for token in part:
            if token.kind in ("ws", "comment"):
                if current:
                    out.append(current)
                    current = ""
            else:
                current += token.text
        if current:
            out.append(current)
    return out


def _four(words: list[str]) -> list[str] | None:
    if not 1 <= len(words) <= 4:
        return None
    top = words[0]
    right = words[1] if len(words) > 1 else top
    bottom = words[2] if len(words) > 2 else top
    left = words[3] if len(words) > 3 else right
    return [top, right, bottom, left]


def _border_parts(words: list[str]) -> dict[str, str]:
    parts = {"width": "medium", "style": "none", "color": "currentcolor"}
    for word in words:
        lower = word.lower()
        if lower in _BORDER_STYLES:
            parts["style"] = lower
        elif re.match(r"^[\d.]", lower) or lower in ("thin", "medium", "thick"):
            parts["width"] = lower
        else:
            parts["color"] = lower
    return parts


def expand(name: str, value: str) -> dict[str, str]:
    """Longhands of a declaration (the common shorthands; others stay as they are)."""
    words = _words(value)
    if name in ("margin", "padding") and (four := _four(words)):
        return {f"{name}-{side}": v for side, v in zip(_SIDES, four, strict=True)}
    if name in ("border-width", "border-style", "border-color") and (four := _four(words)):
        kind = name.split("-")[1]
        return {f"border-{side}-{kind}": v for side, v in zip(_SIDES, four, strict=True)}
    if name in ("border", "outline") or name in (f"border-{side}" for side in _SIDES):
        parts = _border_parts(words)
        sides = _SIDES if name == "border" else [name.split("-")[1]] if name != "outline" else [None]
        out = {}
        for side in sides:
            prefix = "outline" if side is None else f"border-{side}"
            out.update({f"{prefix}-{kind}": v for kind, v in parts.items()})
        return out
    if name == "border-radius" and "/" not in value and (four := _four(words)):
        return {f"border-{corner}-radius": v for corner, v in zip(_CORNERS, four, strict=True)}
    if name == "background" and len(words) == 1:
        word = words[0]
        is_image = word.lower().startswith(("url(", "linear-gradient("))
        key = "background-image" if is_image else "background-color"
        return {key: word}
    return {name: value}


def normalise(value: str) -> str:
    value = " ".join(value.split())
    value = re.sub(r"url\(\s*(['\"]?)(.*?)\1\s*\)", r"url(\2)", value)
    value = re.sub(r"\s*,\s*", ",", value).replace("'", '"')
    return value.lower()


def winners(style: str) -> dict[str, str]:
    declarations, _ = parse_declarations(css_tokens(style), style)
    normal: dict[str, str] = {}
    important: dict[str, str] = {}
    for declaration in declarations:
        target = important if declaration.important else normal
        for name, value in expand(declaration.name, declaration.value).items():
            target[name] = normalise(value)
    return {**normal, **important}


def _attribute(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if name in ("width", "height") and not re.fullmatch(r"\d+(\.\d+)?%?", value):
        return None  # "auto", "200px": a browser ignores them
    return normalise(value)


def elements(html: str, implied_tbody: bool) -> list[tuple[str, dict[str, str], dict[str, str | None]]]:
    if not html.strip():
        return []
    root = lxml.html.document_fromstring(html)
    out = []
    for element in root.iter():
        if not isinstance(element.tag, str) or element.tag == "style":
            continue
        if element.tag == "head" or (element.tag == "tbody" and implied_tbody):
            continue  # Juice's parser makes no <tbody> a browser adds, nor styles <head>
        attributes = {name: _attribute(name, element.get(name)) for name in _ATTRIBUTES}
        out.append((element.tag, winners(element.get("style") or ""), attributes))
    return out


def compare(expected: str, actual: str, implied_tbody: bool) -> list[str]:
    """What differs, in words (empty: the same)."""
    a, b = elements(expected, implied_tbody), elements(actual, implied_tbody)
    if [tag for tag, _, _ in a] != [tag for tag, _, _ in b]:
        return [f"elements differ: {[t for t, _, _ in a]} vs {[t for t, _, _ in b]}"]
    problems = []
    for index, ((tag, style_a, attrs_a), (_, style_b, attrs_b)) in enumerate(zip(a, b, strict=True)):
        for name in sorted(set(style_a) | set(style_b)):
            if style_a.get(name) != style_b.get(name):
                problems.append(f"<{tag}> #{index} {name}: "
                                f"Juice {style_a.get(name)!r}, got {style_b.get(name)!r}")
        for name in _ATTRIBUTES:
            if attrs_a[name] != attrs_b[name]:
                problems.append(f"<{tag}> #{index} @{name}: Juice {attrs_a[name]!r}, got {attrs_b[name]!r}")
    return problems


def cases(root: Path) -> list[tuple[str, Path]]:
    folder = root / "cases"
    return sorted((str(out.relative_to(folder).with_suffix("")), out) for out in folder.rglob("*.out"))


def inliners() -> dict[str, Callable[[str, str], str]]:
    import css_inline

    def library(html: str, css: str) -> str:
        # Juice's defaults apply width and height attributes: css-inline can too
        return css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True,
                                     apply_width_attributes=True, apply_height_attributes=True,
                                     extra_css=css or None).inline(html)

    return {"ours": lambda html, css: inline_html(html, extra_css=css).html, "css-inline": library}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("corpus", type=Path, help="the juice corpus folder (with cases/)")
    parser.add_argument("--inliner", default="ours,css-inline")
    parser.add_argument("--min-pass", type=int, default=0, help="fail when ours passes fewer cases")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what differs in failed cases")
    args = parser.parse_args(argv)
    names = args.inliner.split(",")
    available = inliners()
    found = cases(args.corpus)
    if not found:
        parser.error(f"no cases under {args.corpus}/cases")
    passed = dict.fromkeys(names, 0)
    skipped = 0
    for name, out in found:
        if name in SKIPS:
            skipped += 1
            print(f"{name:50} skipped: {SKIPS[name]}")
            continue
        html = out.with_suffix(".html").read_text()
        css_path = out.with_suffix(".css")
        css = css_path.read_text() if css_path.exists() and not name.startswith("juice-content/") else ""
        options = out.with_suffix(".json")
        if options.exists() and name.startswith("juice-content/"):
            css += json.loads(options.read_text()).get("extraCss", "")
        expected = out.read_text()
        cells, details = [], []
        for inliner in names:
            try:
                problems = compare(expected, available[inliner](html, css), "<tbody" not in html.lower())
            except Exception as exc:
                problems = [f"error: {exc!r}"]
            if not problems:
                passed[inliner] += 1
            cells.append(f"{inliner} {'pass' if not problems else 'FAIL'}")
            if args.verbose and problems and inliner == names[0]:
                details = problems[:5]
        print(f"{name:50} " + "  ".join(cells))
        if name in BY_DESIGN and "FAIL" in cells[0]:
            print(f"    differs by design: {BY_DESIGN[name]}")
        for problem in details:
            print(f"    {problem}")
    compared = len(found) - skipped
    print(f"\n{len(found)} cases, {skipped} skipped, {compared} compared")
    for inliner in names:
        print(f"{inliner}: {passed[inliner]} of {compared} pass")
    ours = passed[names[0]]
    if ours < args.min_pass or any(ours < passed[other] for other in names[1:]):
        print(f"FAIL: {names[0]} passes {ours}, needs {args.min_pass} and no fewer than the others")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
