"""`smtpeter dmarc parse FILE...`: read DMARC aggregate reports from files, no storage.

For operators (what does this report say?) and tests: per file, the ``dmarc`` log's numbers, or
why it is not a report. A file is a received message or the report itself (XML, zip or gzip).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smtpeter.bounces.dmarc import NotADmarcReport, parse_report


def dmarc_parse(args: argparse.Namespace) -> int:
    """Print each file's report summary (--json: a JSON array, one object per file).

    Exits 1 when a file cannot be read or holds no report; the others are still printed.
    """
    results: list[dict[str, Any]] = []
    for path in args.files:
        try:
            with open(path, "rb") as file:
                results.append({"file": path, **parse_report(file.read()).summary()})
        except OSError as exc:
            results.append({"file": path, "error": f"cannot read: {exc.strerror or exc}"})
        except NotADmarcReport as exc:
            results.append({"file": path, "error": f"not a DMARC report: {exc}"})
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for result in results:
            if "error" in result:
                print(f"{result['file']}: {result['error']}", file=sys.stderr)
                continue
            print(f"{result['file']}: {result['reporter']} ({result['organizationName']}) on "
                  f"{result['domain']}, report {result['reportId']}: {result['messages']} messages, "
                  f"{result['failedSpf']} failed SPF, {result['failedDkim']} failed DKIM")
    return 1 if any("error" in result for result in results) else 0
