"""How an entry of the suppression list is shown (REST, CLI) and read back from what people type."""

from __future__ import annotations

import calendar
import csv
import io
import re
import time
from typing import Any

from smtpeter.events.logfiles import time_text
from smtpeter.storage.suppressions import Suppression

COLUMNS = ("address", "reason", "source", "created", "expires")
REASON = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def entry_shape(entry: Suppression) -> dict[str, Any]:
    """``{"address", "reason", "source", "created", "expires"}``: UTC 'YYYY-MM-DD hh:mm:ss', as the log
    files write times; ``expires`` None: until removed."""
    return {"address": entry.address, "reason": entry.reason, "source": entry.source,
            "created": time_text(entry.created),
            "expires": None if entry.expires is None else time_text(entry.expires)}


def csv_text(entries: list[Suppression]) -> str:
    """The entries as CSV, with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for entry in entries:
        shape = entry_shape(entry)
        writer.writerow([shape[column] or "" for column in COLUMNS])
    return out.getvalue()


def parse_expires(value: Any, now: float) -> float | None:
    """An expiry as given: None or "", UTC 'YYYY-MM-DD hh:mm:ss', or seconds since 1970; it must be
    in the future. ValueError says what is wrong."""
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        expires = float(value)
    elif isinstance(value, str):
        try:
            expires = float(calendar.timegm(time.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")))
        except (ValueError, OverflowError):
            raise ValueError("expires must be 'YYYY-MM-DD hh:mm:ss' (UTC) or seconds since 1970") from None
    else:
        raise ValueError("expires must be 'YYYY-MM-DD hh:mm:ss' (UTC) or seconds since 1970")
    if expires <= now:
        raise ValueError("expires is in the past")
    return expires


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not REASON.fullmatch(reason):
        raise ValueError("a reason is a word of lower-case letters (e.g. manual, complaint)")
    return reason
