"""The outbound steps, in the order they run, and how a worker runs them.

Three stages:

* per message (``MESSAGE_STEPS``): work that does not depend on the
  recipient, done once per message (inline CSS, then line lengths);
* per recipient (``RECIPIENT_STEPS``): may change a recipient's envelope
  sender and content (click and open tracking; VERP next);
* per transaction, once the receiving server is known (``wire_form`` then
  ``LAST_STEPS``): the 7-bit form for a peer without 8BITMIME, and then the
  last step (DKIM signing), whose output is exactly what the peer stores.

A step is a plain function; its ``needed`` test is cheap and runs on the
reactor thread, so mail that needs no work never waits for a worker. A step
that fails is skipped and named in the result's warnings: a step never
loses a message. Steps are module-level functions, so a worker process
gets them by reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from smtpeter.mime.lines import crlf_lines, has_long_line
from smtpeter.outbound import hosted_images, inline_css, tracking, wire
from smtpeter.outbound.job import OutboundJob, PreparedMessage, StepSettings
from smtpeter.storage.models import StoredMessage


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., Any]
    needed: Callable[..., bool]


def _limit_line_length(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    return wire.limit_line_length(content)


def _has_long_lines(message: StoredMessage, content: bytes) -> bool:
    return has_long_line(content, 998)


# Per message, in order: run(message, content, settings) -> content; needed(message, content).
MESSAGE_STEPS: tuple[Step, ...] = (
    Step("inline css", inline_css.step, inline_css.step_needed),
    Step("line length", _limit_line_length, _has_long_lines),
    Step("hosted images", hosted_images.run, hosted_images.needed),
)
# Per recipient, in order: run(job, settings) -> job; needed(prepared) says whether a message
# needs it at all.
RECIPIENT_STEPS: tuple[Step, ...] = (
    Step("tracking", tracking.run, tracking.needed),
)
# Last, over the bytes the peer gets: run(job, settings) -> content; needed(job).
LAST_STEPS: tuple[Step, ...] = ()

def run_message_steps(steps: Sequence[Step], message: StoredMessage, content: bytes,
                      settings: StepSettings) -> PreparedMessage:
    """Run per-message steps (in a worker); a failing one is skipped."""
    warnings = []
    for step in steps:
        try:
            content = step.run(message, content, settings)
        except Exception as exc:
            warnings.append(f"{step.name}: {exc!r}")
    return PreparedMessage(message, content, tuple(warnings))


def run_recipient_steps(steps: Sequence[Step], jobs: Sequence[OutboundJob],
                        settings: StepSettings) -> tuple[list[OutboundJob], list[str]]:
    """Run per-recipient steps over each one-recipient job (in a worker)."""
    done, warnings = [], []
    for job in jobs:
        for step in steps:
            try:
                job = step.run(job, settings)
            except Exception as exc:
                warnings.append(f"{step.name} for {job.recipients[0].address}: {exc!r}")
        done.append(job)
    return done, warnings


def wire_form(job: OutboundJob, eight_bit_ok: bool, last: Sequence[Step],
              settings: StepSettings) -> tuple[bytes, list[str]]:
    """The bytes for a peer (in a worker): 7-bit unless it takes 8BITMIME, then the last steps.

    Raises wire.CannotDowngrade when the message cannot reach such a peer.
    """
    if not eight_bit_ok:
        job = job.with_content(wire.make_7bit(job.content))
    # The line ends the client would make anyway, now: the last steps see the bytes as sent.
    job = job.with_content(crlf_lines(job.content))
    warnings = []
    for step in last:
        try:
            job = job.with_content(step.run(job, settings))
        except Exception as exc:
            warnings.append(f"{step.name}: {exc!r}")
    return job.content, warnings
