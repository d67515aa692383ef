"""Our one-click unsubscribe (``oneclick``): a per-recipient step.

Mail with the ``oneclick`` option that carries no http(s) unsubscribe URL of its own gets ours
(smtpeter/suppressions/oneclick.py): ``List-Unsubscribe: <URL>`` (RFC 2369; a ``mailto:`` the
message had stays beside it) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058).
A message whose List-Unsubscribe names a URL already keeps its own. DKIM signs after this step,
and signs both fields.
"""

from __future__ import annotations

import re

from smtpeter.mime import header
from smtpeter.outbound.job import OutboundJob, PreparedMessage, StepSettings
from smtpeter.suppressions import oneclick

_TARGET = re.compile(r"<([^>]*)>")
_OURS = ("list-unsubscribe", "list-unsubscribe-post")


def needed(prepared: PreparedMessage) -> bool:
    return bool(prepared.message.options.oneclick)


def run(job: OutboundJob, settings: StepSettings) -> OutboundJob:
    """This recipient's copy with our List-Unsubscribe pair, unless it has an unsubscribe URL."""
    content = bytes(job.content)
    parsed = header.parse(content)
    given = header.first(parsed.fields, "list-unsubscribe")
    targets = [target.strip() for target in (_TARGET.findall(given.value) if given is not None else [])
               if "\r" not in target and "\n" not in target]
    if any(target.strip().lower().startswith(("http://", "https://")) for target in targets):
        return job
    base = job.auth.tracking_base if job.auth is not None and job.auth.tracking_base else settings.public_url
    url = oneclick.unsubscribe_url(base, oneclick.signer(settings.link_keys), job.recipient_ids[0])
    # One target a line: a URL may not be folded inside its <...> (RFC 2369 §2).
    value = ",\r\n ".join(f"<{target}>" for target in [url, *targets])
    fields = [b"List-Unsubscribe: " + value.encode("utf-8", "surrogateescape") + b"\r\n",
              header.make_field("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    kept = [field.raw for field in parsed.fields if field.name not in _OURS]
    return job.with_content(b"".join([*fields, *kept, content[parsed.body_start:]]))
