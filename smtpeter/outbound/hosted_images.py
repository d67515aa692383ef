"""``images: hosted``: embedded images leave the message, and its HTML points to our copies.

A per-message step. Every ``cid:`` URL in an HTML part that names an embedded
image (``hosting.embedded_images``) becomes that image's hosted URL (signed,
kind "hosted", the same for every recipient), and the images so replaced are
taken out of the message. A ``multipart/related`` left with one part becomes
that part (the whole message, when it was the message), so the message stays
plain valid MIME; images no HTML shows stay where they are.

Nothing is written here: the step runs in a worker process, without storage.
The stored message is the durable source of the images; the endpoint that
serves a hosted URL finds the image in it by the same rules, by position, and
keeps the decoded image in storage (``hosted_images``) for every later load,
on every node.
"""

from __future__ import annotations

import re

from smtpeter import hosting
from smtpeter.links import LinkSigner
from smtpeter.mime import tree
from smtpeter.mime.lines import has_long_line
from smtpeter.outbound.job import StepSettings
from smtpeter.storage.models import StoredMessage

_CONTENT_ID = re.compile(rb"^content-id[ \t]*:", re.IGNORECASE | re.MULTILINE)


def needed(message: StoredMessage, content: bytes) -> bool:
    return message.options.images == "hosted" and _CONTENT_ID.search(content) is not None


def run(message: StoredMessage, content: bytes, settings: StepSettings) -> bytes:
    root = tree.parse(content)
    images = hosting.embedded_images(root)
    if not images:
        return content
    signer = LinkSigner(settings.link_keys)
    by_key: dict[str, hosting.Embedded] = {}
    for image in images:
        by_key.setdefault(hosting.cid_key(image.content_id), image)  # the first of a repeated id
    urls = {key: hosting.hosted_url(settings.public_url, signer, message.id, image)
            for key, image in by_key.items()}
    used: set[str] = set()
    for part in hosting.html_parts(root):
        if not hosting.ascii_compatible(part.params.get("charset", "us-ascii")):
            continue
        rewritten, found = hosting.replace_cids(part.decoded(), urls)
        if not found:
            continue
        used |= found
        encoding = part.transfer_encoding
        if encoding not in ("base64", "quoted-printable") and has_long_line(rewritten, 998):
            encoding = "quoted-printable"
        part.set_body(rewritten, encoding)
    if not used:
        return content
    taken = {id(by_key[key].part) for key in used}
    kept = _without(root, taken, top=True)
    return content if kept is None else tree.serialize(kept)


def _without(part: tree.Part, taken: set[int], top: bool = False) -> tree.Part | None:
    """``part`` without the leaves in ``taken`` (by ``id``); None when nothing is left of it."""
    if not part.is_multipart:
        return None if id(part) in taken else part
    children = [kept for child in part.children if (kept := _without(child, taken)) is not None]
    if not children:
        return None
    if len(children) == 1 and len(part.children) > 1 and part.content_type == "multipart/related":
        return _lifted(part, children[0], top)
    part.children = children
    return part


def _lifted(related: tree.Part, child: tree.Part, top: bool) -> tree.Part:
    """``child`` in the place of the ``multipart/related`` it was left alone in."""
    if not top:
        child.delimiter = related.delimiter
        return child
    # The message itself: its own fields stay, the child's content fields replace the related's.
    child.fields = ([f for f in related.fields if not f.name.startswith("content-")]
                    + [f for f in child.fields if f.name.startswith("content-")])
    child.separator = child.separator or b"\r\n"
    child.delimiter = None
    return child
