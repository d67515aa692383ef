"""Building a MIME message from the JSON fields of ``/v1/send``.

The stdlib ``email`` package does the encoding (RFC 2047 words, RFC 2231
file names, quoted-printable or base64 bodies, folding). Every value is
checked first, so a field can never add a header line of its own.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import mimetypes
import re
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from smtpeter.ingress.http.request import BadRequest, mailbox, text_field

_EXTRA_HEADER = re.compile(r"[Xx]-[A-Za-z0-9][A-Za-z0-9-]*")
_MAX_ATTACHMENT_NAME = 255


def _addresses(name: str, value: Any) -> list[Address]:
    """Addresses from a string, a comma list, a list, or a mix; display names allowed."""
    items = value if isinstance(value, list) else [value]
    texts = [text_field(name, item) for item in items]
    found: list[Address] = []
    for display, address in email.utils.getaddresses(texts):
        if not address:
            raise BadRequest(f"'{name}' holds something that is not an address")
        checked = mailbox(name, address)
        local, _, domain = checked.rpartition("@")
        found.append(Address(display_name=display, username=local, domain=domain))
    if not found:
        raise BadRequest(f"'{name}' holds no address")
    return found


def _unsubscribe(value: Any) -> tuple[str, bool]:
    """The List-Unsubscribe value (RFC 2369) and whether one-click applies (RFC 8058)."""
    if not isinstance(value, dict):
        raise BadRequest("'unsubscribe' must be an object with 'email' and/or 'url'")
    unknown = sorted(set(value) - {"email", "url", "oneclick"})
    if unknown:
        raise BadRequest(f"unknown field 'unsubscribe.{unknown[0]}'")
    targets = []
    if value.get("email"):
        targets.append(f"<mailto:{mailbox('unsubscribe.email', value['email'])}>")
    url = None
    if value.get("url"):
        url = text_field("unsubscribe.url", value["url"])
        if not re.fullmatch(r"https?://[\x21-\x7e]+", url) or ">" in url:
            raise BadRequest("'unsubscribe.url' must be an http(s) URL")
        targets.append(f"<{url}>")
    if not targets:
        raise BadRequest("'unsubscribe' needs 'email' or 'url'")
    oneclick = False
    if value.get("oneclick"):
        if not (url and url.startswith("https://")):
            raise BadRequest("'unsubscribe.oneclick' needs an https 'url' (RFC 8058)")
        oneclick = True
    return ", ".join(targets), oneclick


def _attachments(value: Any) -> list[tuple[bytes, str, str]]:
    if not isinstance(value, list):
        raise BadRequest("'attachments' must be a list")
    found = []
    for index, item in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object with 'data' and 'name'")
        unknown = sorted(set(item) - {"data", "name", "type", "url"})
        if unknown:
            raise BadRequest(f"unknown field '{where}.{unknown[0]}'")
        if "url" in item:
            raise BadRequest(f"'{where}.url': attachments by URL are not fetched; send them as 'data'")
        try:
            encoded = text_field(f"{where}.data", item.get("data"), allow_empty=True)
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"'{where}.data' is not valid base64") from None
        name = text_field(f"{where}.name", item.get("name", "attachment"))
        if len(name) > _MAX_ATTACHMENT_NAME or "/" in name or "\\" in name:
            raise BadRequest(f"'{where}.name' must be a plain file name")
        content_type = item.get("type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
        content_type = text_field(f"{where}.type", content_type).lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", content_type):
            raise BadRequest(f"'{where}.type' must be a MIME type like application/pdf")
        found.append((data, name, content_type))
    return found


def compose(fields: dict[str, Any]) -> tuple[bytes, bool]:
    """The message as CRLF bytes, and whether it needs SMTPUTF8 (non-ASCII addresses).

    Message-ID and Date are added with every other submission's (Submission.identity_headers).
    """
    senders = _addresses("from", fields["from"])
    if len(senders) != 1:
        raise BadRequest("'from' must be exactly one address")
    sender = senders[0]
    headers: list[tuple[str, Any]] = [("From", sender)]
    every = [sender]
    for name, header in (("to", "To"), ("cc", "Cc"), ("replyto", "Reply-To")):
        if fields.get(name):
            addresses = _addresses(name, fields[name])
            every += addresses
            headers.append((header, addresses))
    if "subject" in fields:
        headers.append(("Subject", text_field("subject", fields["subject"], allow_empty=True)))
    if fields.get("unsubscribe"):
        targets, oneclick = _unsubscribe(fields["unsubscribe"])
        headers.append(("List-Unsubscribe", targets))
        if oneclick:
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    extra = fields.get("extra") or {}
    if not isinstance(extra, dict):
        raise BadRequest("'extra' must be an object of x-* header names and values")
    for name, value in extra.items():
        if not _EXTRA_HEADER.fullmatch(name):
            raise BadRequest(f"'extra': only x-* headers may be added, not {name!r}")
        if name.lower().startswith("x-smtpeter-"):
            raise BadRequest(f"'extra': {name} is an instruction header; use the option field instead")
        headers.append((name, text_field(f"extra.{name}", value, allow_empty=True)))
    smtputf8 = any(not (a.username.isascii() and a.domain.isascii()) for a in every)
    # 7-bit bodies (quoted-printable or base64) survive any next hop unchanged.
    policy = (email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP).clone(
        max_line_length=78, cte_type="8bit" if smtputf8 else "7bit")
    message = EmailMessage(policy=policy)
    for name, value in headers:
        message[name] = value
    text = text_field("text", fields["text"], one_line=False) if fields.get("text") else None
    html = text_field("html", fields["html"], one_line=False) if fields.get("html") else None
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")
    for data, name, content_type in _attachments(fields.get("attachments") or []):
        maintype, subtype = content_type.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes(policy=policy), smtputf8
