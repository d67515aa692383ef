"""The VERP return path (``trackbounces``): a per-recipient step.

Each recipient's copy goes out with the envelope sender
``b-<recipient id>-<tag>@<bounce domain>`` (smtpeter/verp.py), so a bounce
names the recipient it is about and forged ones are recognised. SMTPeter's
matrix (smtpeter-api.md §4.5): with ``trackbounces`` our envelope replaces the
customer's, or stands in for a missing one; the customer's envelope (kept in
the stored message) is where bounces are forwarded.

Only with a bounce domain whose MX points to us (``SenderAuth.bounce_domain``,
set by the sender domain's last DNS check): without one, bounces to the VERP
address could not reach us, so the envelope stays what it was. The null
sender stays null: mail sent with ``<>`` is a notification, and giving it a
return path could make a bounce of a bounce.

Each recipient gets its own envelope sender, so VERP mail goes one recipient
per transaction (the pipeline merges only identical envelopes).
"""

from __future__ import annotations

import dataclasses

from smtpeter.outbound.job import OutboundJob, PreparedMessage, StepSettings
from smtpeter.verp import VerpSigner

_signers: dict[tuple[bytes, ...], VerpSigner] = {}


def needed(prepared: PreparedMessage) -> bool:
    auth = prepared.auth
    return (bool(prepared.message.options.trackbounces) and auth is not None and bool(auth.bounce_domain)
            and prepared.message.envelope.sender != "")


def run(job: OutboundJob, settings: StepSettings) -> OutboundJob:
    """This recipient's copy with its VERP return path as the envelope sender."""
    if job.auth is None or not job.auth.bounce_domain or job.envelope.sender == "":
        return job
    address = _signer(settings.link_keys).address(job.recipient_ids[0], job.auth.bounce_domain)
    return dataclasses.replace(job, envelope=dataclasses.replace(job.envelope, sender=address))


def _signer(keys: tuple[bytes, ...]) -> VerpSigner:
    signer = _signers.get(keys)
    if signer is None:
        signer = _signers[keys] = VerpSigner(keys)
    return signer
