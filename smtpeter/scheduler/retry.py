"""What comes after an attempt: delivered, failed for good, retried (when), or expired.

The retry schedule, a 4xx's own "try again in N minutes", and the message's
delivery time decide it; nothing here knows how the verdict is stored or reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpeter.attempt import RecipientResult
from smtpeter.storage.models import DELIVERED, EXPIRED, FAILED, QUEUED

# The last attempt before a message expires comes this long before the end.
FINAL_ATTEMPT_MARGIN = 30.0
# A server's "try again in N minutes" is honoured within these bounds.
_HINT_RANGE = (30.0, 86400.0)
_HINT = re.compile(
    r"(?:try again|retry|again|wait|greylist\w*|deferred)\D{0,30}?(\d+)\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.I,
)
_UNITS = {"s": 1, "m": 60, "h": 3600}


def retry_hint(text: str) -> float | None:
    """Seconds a 4xx reply asks us to wait ("try again in 5 minutes"), if it says."""
    match = _HINT.search(text)
    if not match:
        return None
    seconds = int(match.group(1)) * _UNITS[match.group(2)[0].lower()]
    return min(max(float(seconds), _HINT_RANGE[0]), _HINT_RANGE[1])


def retry_delay(schedule: list[float], attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt; the last value repeats."""
    return schedule[min(attempts, len(schedule)) - 1]


@dataclass(frozen=True)
class Verdict:
    """A recipient's state after an attempt (queued means: try again at ``next_attempt``)."""

    state: str
    attempts: int  # attempts made so far, this one included
    next_attempt: float


def decide(result: RecipientResult, attempts_before: int, now: float, expires: float,
           schedule: list[float], expired: bool = False) -> Verdict:
    """The verdict on ``result``; ``expired`` when the message ran out of time before an attempt."""
    attempts = attempts_before + (0 if expired else 1)
    if result.delivered:
        return Verdict(DELIVERED, attempts, now)
    if result.permanent:
        return Verdict(FAILED, attempts, now)
    hint = retry_hint(result.description)
    delay = hint if hint is not None else retry_delay(schedule, attempts)
    if now + delay >= expires and expires - now > 2 * FINAL_ATTEMPT_MARGIN:
        # The retry would come too late: make a last one just before expiry.
        delay = expires - now - FINAL_ATTEMPT_MARGIN
    if expired or now + delay >= expires:
        return Verdict(EXPIRED, attempts, now)
    return Verdict(QUEUED, attempts, now + delay)
