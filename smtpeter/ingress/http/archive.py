"""GET /v1/recipient, envelope, headers, text, html, attachments and embeds of a message id:
views of an archived message, parsed off the reactor."""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from smtpeter.ingress.http.routing import app, error, handled, json_reply, text
from smtpeter.mime import header as msg
from smtpeter.storage import NotFound
from smtpeter.storage.models import StoredMessage

if TYPE_CHECKING:
    from smtpeter.ingress.http.site import API


@dataclass(frozen=True)
class Part:
    rank: int
    name: str
    type: str
    size: int
    content: bytes


def _parse(mime: bytes) -> EmailMessage:
    return email.message_from_bytes(mime, policy=email.policy.default)  # type: ignore[return-value]


def headers(mime: bytes) -> str:
    parsed = msg.parse(mime)
    return b"".join(field.raw for field in parsed.fields).decode("utf-8", "replace")


def body(mime: bytes, subtype: str) -> str | None:
    """The message's text/plain or text/html body (not an attachment), decoded; None if it has none."""
    message = _parse(mime)
    try:
        part = message.get_body(preferencelist=(subtype,))
    except Exception:  # a broken structure has no body we can name
        return None
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    try:
        return part.get_content()
    except (LookupError, UnicodeError):  # an unknown charset
        return part.get_payload(decode=True).decode("utf-8", "replace")


def _leaves(mime: bytes) -> list[EmailMessage]:
    return [p for p in _parse(mime).walk() if not p.is_multipart()]


def attachments(mime: bytes) -> list[Part]:
    """Parts that are attachments (a Content-Disposition of attachment, or a named non-body part)."""
    found = []
    for part in _leaves(mime):
        disposition = part.get_content_disposition()
        if disposition == "attachment" or (disposition is None and part.get_filename()
                                           and not part.get("Content-ID")):
            found.append(part)
    return _numbered(found)


def embeds(mime: bytes) -> list[Part]:
    """Inline parts referenced by Content-ID (images shown in the HTML)."""
    return _numbered([p for p in _leaves(mime) if p.get("Content-ID") and
                      p.get_content_disposition() != "attachment"])


def _numbered(parts: list[EmailMessage]) -> list[Part]:
    result = []
    for rank, part in enumerate(parts):
        content = part.get_payload(decode=True) or b""
        name = part.get_filename() or (part.get("Content-ID") or "").strip("<>") or f"part{rank}"
        result.append(Part(rank, name, part.get_content_type(), len(content), content))
    return result


def pick(parts: list[Part], item: str) -> Part | None:
    """A part by its rank (from 0) or its name."""
    if item.isdigit() and int(item) < len(parts):
        return parts[int(item)]
    return next((p for p in parts if p.name == item), None)


# -- the routes --------------------------------------------------------------------------


async def _archived(api: API, request: Any, message_id: str) -> tuple[Any, StoredMessage]:
    account = await api.account(request)
    entry = await api.storage.recipient(message_id, account_id=account)
    return entry, await api.storage.message_content(message_id)


@app.route("/v1/recipient/<message_id>", methods=["GET"])
@handled
async def recipient(api: API, request: Any, message_id: str) -> bytes:
    entry, _ = await _archived(api, request, message_id)
    return text(request, entry.address)


@app.route("/v1/envelope/<message_id>", methods=["GET"])
@handled
async def envelope(api: API, request: Any, message_id: str) -> bytes:
    _, content = await _archived(api, request, message_id)
    return text(request, content.envelope.sender or "")


@app.route("/v1/headers/<message_id>", methods=["GET"])
@app.route("/v1/header/<message_id>", methods=["GET"])
@handled
async def header_text(api: API, request: Any, message_id: str) -> bytes:
    _, content = await _archived(api, request, message_id)
    return text(request, headers(content.mime))


@app.route("/v1/text/<message_id>", methods=["GET"])
@handled
async def text_part(api: API, request: Any, message_id: str) -> bytes:
    return await _body_part(api, request, message_id, "plain")


@app.route("/v1/html/<message_id>", methods=["GET"])
@handled
async def html_part(api: API, request: Any, message_id: str) -> bytes:
    return await _body_part(api, request, message_id, "html")


async def _body_part(api: API, request: Any, message_id: str, subtype: str) -> bytes:
    _, content = await _archived(api, request, message_id)
    part = await api.in_thread(body, content.mime, subtype)
    if part is None:
        return error(request, 404, f"the message has no text/{subtype} part")
    return text(request, part)


@app.route("/v1/attachments/<message_id>", methods=["GET"])
@app.route("/v1/embeds/<message_id>", methods=["GET"])
@handled
async def part_list(api: API, request: Any, message_id: str) -> bytes:
    _, content = await _archived(api, request, message_id)
    parts = await _parts(api, request, content.mime)
    return json_reply(request, [{"name": p.name, "rank": p.rank, "type": p.type, "size": p.size}
                                for p in parts])


@app.route("/v1/attachments/<message_id>/<path:item>", methods=["GET"])
@app.route("/v1/embeds/<message_id>/<path:item>", methods=["GET"])
@handled
async def part(api: API, request: Any, message_id: str, item: str) -> bytes:
    _, content = await _archived(api, request, message_id)
    found = pick(await _parts(api, request, content.mime), item)
    if found is None:
        raise NotFound()
    request.setHeader(b"content-type", found.type.encode("ascii", "replace"))
    quoted = json.dumps(found.name.encode("ascii", "replace").decode())
    request.setHeader(b"content-disposition", f"attachment; filename={quoted}".encode())
    return found.content


async def _parts(api: API, request: Any, mime: bytes) -> list[Part]:
    wanted = embeds if request.path.startswith(b"/v1/embeds/") else attachments
    return await api.in_thread(wanted, mime)
