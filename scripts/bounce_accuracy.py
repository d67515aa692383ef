#!/usr/bin/env python3
"""The bounce classifier over Sisimai's sample bounces: per-recipient accuracy.

    scripts/bounce_accuracy.py ../shared/corpora/sisimai [--min-reason 90] [--min-status 95] [--misses]

The corpus (``maildir/*.eml`` and ``expected.json``) gives, per file, the rows
Sisimai's own tests expect: one per recipient, in Sisimai's order, with status,
reply code, reason, hard bounce and feedback type. The expected rows carry no
addresses, so ours are matched to them by order (a row we did not find is a
miss on every count). A status of the form X.0.9NN is Sisimai's stand-in for
"the message had none": only its class digit is compared. Prints reason,
status and hard/soft accuracy, the confusion of the reasons we got wrong
(expected -> ours) and, with --misses, every miss. Exits 1 below a minimum.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpeter.bounces import classify

_PSEUDO_STATUS = re.compile(r"^[245]\.0\.9\d\d$")


def status_matches(expected: str, ours: str) -> bool:
    if _PSEUDO_STATUS.match(expected):
        return ours[:1] == expected[:1]
    return ours == expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="directory with maildir/ and expected.json")
    parser.add_argument("--min-reason", type=float, default=0.0, help="fail below this reason accuracy (%%)")
    parser.add_argument("--min-status", type=float, default=0.0, help="fail below this status accuracy (%%)")
    parser.add_argument("--misses", action="store_true", help="list every recipient we got wrong")
    args = parser.parse_args(argv)

    cases = json.loads((args.corpus / "expected.json").read_text())["cases"]
    total = reason_ok = status_ok = hard_ok = 0
    confusion: Counter[tuple[str, str]] = Counter()
    misses: list[str] = []
    for case in cases:
        report = classify((args.corpus / "maildir" / case["file"]).read_bytes())
        for index, expected in enumerate(case["recipients"]):
            total += 1
            ours = report.recipients[index] if index < len(report.recipients) else None
            got_reason = ours.reason if ours else "(none)"
            got_status = ours.status if ours else ""
            got_hard = ours.hardbounce if ours else None
            good_reason = got_reason == expected["reason"]
            good_status = ours is not None and status_matches(expected["status"], got_status)
            good_hard = got_hard == expected["hardbounce"]
            reason_ok += good_reason
            status_ok += good_status
            hard_ok += good_hard
            if not good_reason:
                confusion[(expected["reason"], got_reason)] += 1
            if not (good_reason and good_status and good_hard):
                misses.append(
                    f"{case['file']}#{index + 1}: reason {expected['reason']} -> {got_reason}, "
                    f"status {expected['status'] or '-'} -> {got_status or '-'}, "
                    f"hard {expected['hardbounce']} -> {got_hard}"
                    + (f"  [{ours.command or '-'} {ours.replycode or '-'}] {ours.diagnostic[:160]}"
                       if ours else "")
                )

    def percent(count: int) -> float:
        return 100.0 * count / total if total else 0.0

    print(f"bounces: {len(cases)} messages, {total} recipients")
    print(f"reason:    {reason_ok}/{total} = {percent(reason_ok):.1f}%")
    print(f"status:    {status_ok}/{total} = {percent(status_ok):.1f}%")
    print(f"hard/soft: {hard_ok}/{total} = {percent(hard_ok):.1f}%")
    if confusion:
        print("reasons missed (expected -> ours: count):")
        for (expected, got), count in sorted(confusion.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {expected} -> {got}: {count}")
    if args.misses:
        print("misses:")
        for line in misses:
            print(f"  {line}")
    failed = percent(reason_ok) < args.min_reason or percent(status_ok) < args.min_status
    if failed:
        print(f"below the minimums (reason {args.min_reason}%, status {args.min_status}%)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
