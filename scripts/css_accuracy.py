#!/usr/bin/env python3
"""How close inlined mail looks to the original, judged by headless Chromium.

    scripts/css_accuracy.py ../shared/corpora/templates [--inliner ours,css-inline,none] [--target 100]

For every ``*.html`` in the folder: load the original with its ``<style>``
and the inlined page with every ``<style>`` removed (as a webmail client that
strips them), at 900x1200 with the network blocked, and compare every
element's computed style (tests/support/chromium.py), with the original's
``@media`` rules that have a condition switched off (they hold on some
screens, not on others; the inliner keeps them in ``<style>``). The strict
score, against the original as the 900-pixel viewport shows it, is printed
beside it. Prints the score per
file, per collection (the file name up to its first ``-``) and in total, for
each inliner asked for, and exits 1 when ours (the first inliner) is below
the target. Inliners: ``ours`` (smtpeter.outbound.inline_css), ``css-inline``
(css_inline 0.24 alone, remote stylesheets off, at-rules kept) and ``none``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chromium import StyleProbe


def inliners() -> dict[str, Callable[[str], str]]:
    import css_inline

    from smtpeter.outbound.inline_css import inline_html

    library = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
    return {
        "ours": lambda html: inline_html(html).html,
        "css-inline": library.inline,
        "none": lambda html: html,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("corpus", type=Path, help="folder of HTML templates")
    parser.add_argument("--inliner", default="ours",
                        help="comma-separated: ours, css-inline, none (default: ours)")
    parser.add_argument("--target", type=float, default=100.0, help="percent ours must reach (default 100)")
    parser.add_argument("--differences", type=int, default=3, help="differences shown per file")
    args = parser.parse_args(argv)
    names = args.inliner.split(",")
    available = inliners()
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"unknown inliner {', '.join(unknown)}")
    files = sorted(args.corpus.glob("*.html"))
    if not files:
        parser.error(f"no *.html in {args.corpus}")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # equal, compared, equal strictly
    collections: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    inline_time: dict[str, float] = defaultdict(float)
    started = time.monotonic()
    with StyleProbe() as probe:
        for path in files:
            original = path.read_bytes().decode("utf-8", "replace")
            collection = path.name.split("-")[0]
            cells = []
            for name in names:
                began = time.perf_counter()
                inlined = available[name](original)
                inline_time[name] += time.perf_counter() - began
                result = probe.compare(original, inlined, keep=args.differences)
                for bucket in (totals[name], collections[(name, collection)]):
                    bucket[0] += result.equal
                    bucket[1] += result.total
                totals[name][2] += result.strict.equal
                cells.append(f"{name} {100 * result.score:7.3f}%")
                if result.strict.equal != result.equal:
                    cells[-1] += f" (strict {100 * result.strict.score:7.3f}%)"
                if name == names[0]:
                    differences = result.differences
                    strict_only = [d for d in result.strict.differences if d not in result.differences]
                    compat = result.compat
            print(f"{path.name:45} " + "  ".join(cells), flush=True)
            if compat[0] != compat[1]:
                print(f"    document mode {compat[0]} became {compat[1]}")
            for index, tag, prop, before, after in differences:
                print(f"    element {index} <{tag}> {prop}: {before!r} became {after!r}")
            for index, tag, prop, before, after in strict_only:
                print(f"    strict: element {index} <{tag}> {prop}: {before!r} at 900 px"
                      f" (a conditional @media rule) became {after!r}")
    print()
    for collection in sorted({c for _, c in collections}):
        cells = []
        for name in names:
            equal, compared = collections[(name, collection)]
            cells.append(f"{name} {100 * equal / compared:7.3f}%")
        print(f"{collection:45} " + "  ".join(cells))
    cells = [f"{name} {100 * totals[name][0] / totals[name][1]:7.3f}%" for name in names]
    print(f"{'total (' + str(totals[names[0]][1]) + ' element-properties)':45} " + "  ".join(cells))
    cells = [f"{name} {100 * totals[name][2] / totals[name][1]:7.3f}%" for name in names]
    print(f"{'strict (conditional @media as at 900 px)':45} " + "  ".join(cells))
    for name in names:
        print(f"{name}: {1000 * inline_time[name] / len(files):.2f} ms per template to inline")
    print(f"{len(files)} files in {time.monotonic() - started:.1f} s")
    score = 100 * totals[names[0]][0] / totals[names[0]][1]
    if score < args.target:
        print(f"FAIL: {names[0]} scores {score:.3f}%, below the target {args.target}%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
