"""`smtpeter bounce parse FILE...`: classify received messages from files, no storage.

For operators (what did this bounce say?) and so the classifier can be checked
from outside: per file, what it is and, per recipient, the reason.
"""

from __future__ import annotations

import argparse
import json
import sys

FIELDS = ("recipient", "status", "replycode", "reason", "hardbounce", "feedbacktype")


def bounce_parse(args: argparse.Namespace) -> int:
    """Print each file's kind and recipients (--json: a JSON array, one object per file).

    Exits 1 when a file cannot be read; the others are still printed.
    """
    from smtpeter.bounces import classify  # the phrase tables compile on first use only

    results: list[dict[str, object]] = []
    failed = False
    for path in args.files:
        try:
            with open(path, "rb") as file:
                message = file.read()
        except OSError as exc:
            results.append({"file": path, "error": exc.strerror or str(exc)})
            failed = True
            continue
        report = classify(message)
        results.append({
            "file": path,
            "kind": report.kind,
            "recipients": [{name: getattr(r, name) for name in FIELDS} for r in report.recipients],
        })
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        _print_human(results)
    return 1 if failed else 0


def _print_human(results: list[dict[str, object]]) -> None:
    for result in results:
        if "error" in result:
            print(f"{result['file']}: cannot read: {result['error']}", file=sys.stderr)
            continue
        print(f"{result['file']}: {result['kind']}")
        recipients = result["recipients"]
        assert isinstance(recipients, list)
        for row in recipients:
            hard = "hard" if row["hardbounce"] else "soft"
            extra = f" ({row['feedbacktype']})" if row["feedbacktype"] else ""
            print(f"  {row['recipient'] or '(unknown recipient)'}  {row['status'] or '-'}  "
                  f"{row['replycode'] or '-'}  {row['reason']}{extra}  {hard}")
