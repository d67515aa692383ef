"""The outbound steps, in the order they run, and how a worker runs them.

Three stages:

* per message (``MESSAGE_STEPS``): work that does not depend on the
  recipient, done once per message (inline CSS, then line lengths);
* per recipient (``RECIPIENT_STEPS``): may change a recipient's envelope
  sender and content (click and open tracking, the VERP return path, our
  one-click unsubscribe);
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
from smtpeter.outbound import dkim, hosted_images, inline_css, tracking, unsubscribe, verp, wire
from smtpeter.outbound.job import OutboundJob, PreparedMessage, StepSettings
from smtpeter.storage.models import StoredMessage


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., Any]
    needed: Callable[..., bool]
    # Microseconds of work (a hash, no parsing): run where the job is, since a trip to a worker
    # process and back costs the reactor far more than the step (about 0.15 ms a message).
    light: bool = False


def _limit_line_length(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    return wire.limit_line_length(content)


def _has_long_lines(message: StoredMessage, content: bytes) -> bool:
    return has_long_line(content, 998)


class StepPartlyFailed(Exception):
    """A last step did part of its work: ``content`` is what it made, the message says what it left."""

    def __init__(self, content: bytes, reason: str) -> None:
        super().__init__(reason)
        self.content = content


def _dkim_sign(job: OutboundJob, settings: StepSettings) -> bytes:
    assert job.auth is not None
    signed, failed = dkim.sign_each(job.content, job.auth.signing_keys)
    if failed:  # a key that cannot sign leaves the others' signatures; each failure is a warning
        raise StepPartlyFailed(signed, "; ".join(failed))
    return signed


def _has_signing_keys(job: OutboundJob) -> bool:
    return job.auth is not None and bool(job.auth.signing_keys)


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
    Step("verp", verp.run, verp.needed, light=True),
    # A header pair and an HMAC: light, although it reads the header.
    Step("one-click unsubscribe", unsubscribe.run, unsubscribe.needed, light=True),
)
# Last, over the bytes the peer gets: run(job, settings) -> content; needed(job). A step that
# fails is skipped (DKIM: the mail goes out unsigned, with a warning); one that raises
# StepPartlyFailed gives what it did.
LAST_STEPS: tuple[Step, ...] = (
    Step("dkim", _dkim_sign, _has_signing_keys),
)


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
        except StepPartlyFailed as partly:
            job = job.with_content(partly.content)
            warnings.append(f"{step.name}: {partly}")
        except Exception as exc:
            warnings.append(f"{step.name}: {exc!r}")
    return job.content, warnings
