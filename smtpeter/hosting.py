"""Hosted images and the web version: their signed URLs, and the embedded images of a message.

A hosted image (``images: hosted``) is named by its stored message
(``messages.id``, an id of the same form as a recipient's), its position among
the message's embedded images and its file name, which the link's tag covers:
``{public_url}/hosted/{token}/{name}``. One URL serves every recipient: it is
made once per message, by a per-message step (``outbound/hosted_images.py``),
and served by ``ingress/http/images.py``, which finds the image again in the
stored message by the same rules (``embedded_images``).

The web version is named by the recipient (its public message id):
``{public_url}/webversion/{token}``, served by ``ingress/http/webversion.py``.
"""

from __future__ import annotations

import codecs
import html
import mimetypes
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from smtpeter.links import MAX_POSITION, Link, LinkSigner
from smtpeter.mime import tree

HOSTED_PATH = "/hosted/"
WEBVERSION_PATH = "/webversion/"

# A cid: URL (RFC 2392) in HTML: in an attribute or a CSS url(). Content-IDs are addr-spec
# like (local@domain); "&" ends one, so an entity-quoted url(&quot;cid:x&quot;) is found.
_CID_URL = re.compile(rb"(?<![\w.+-])cid:([^\s\"'<>()\\&]+)", re.IGNORECASE)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 60


@dataclass(frozen=True)
class Embedded:
    """An image of the message that its HTML may show by its Content-ID."""

    position: int  # among the message's embedded images, in tree order
    part: tree.Part
    content_id: str  # without the angle brackets
    content_type: str
    name: str  # a file name safe in a URL path


def embedded_images(root: tree.Part) -> list[Embedded]:
    """The image parts that have a Content-ID, in tree order. (A part marked as an attachment
    counts too: mail programs make those, and show them where the HTML names them.)"""
    found: list[Embedded] = []
    for part in root.walk():
        if part.is_multipart or not part.content_type.startswith("image/"):
            continue
        field = part.header("content-id")
        content_id = field.value.strip().removeprefix("<").removesuffix(">").strip() if field else ""
        if not content_id:
            continue
        if len(found) > MAX_POSITION:
            break
        wanted = (tree.disposition(part)[1].get("filename") or part.params.get("name")
                  or content_id.partition("@")[0])
        found.append(Embedded(len(found), part, content_id, part.content_type,
                              file_name(wanted, part.content_type, len(found))))
    return found


def file_name(wanted: str, content_type: str, position: int) -> str:
    """``wanted`` as a file name of letters, digits, ".", "_" and "-", with an extension."""
    name = _UNSAFE_NAME.sub("-", wanted).strip(".-")[:_MAX_NAME].rstrip(".-")
    name = name or f"image{position}"
    if "." not in name:
        name += mimetypes.guess_extension(content_type, strict=False) or ""
    return name


def html_parts(root: tree.Part) -> Iterator[tree.Part]:
    """The text/html parts that are not attachments."""
    for part in root.walk():
        if part.is_multipart or part.content_type != "text/html":
            continue
        if tree.disposition(part)[0] != "attachment":
            yield part


def ascii_compatible(charset: str) -> bool:
    """Whether URLs are written in ASCII bytes in this charset (not so in UTF-16 or UTF-32)."""
    try:
        codecs.lookup(charset)
        return "cid:x@y.z/".encode(charset) == b"cid:x@y.z/"
    except (LookupError, UnicodeError, ValueError):
        return True  # an unknown charset: the bytes are all we have, and mail is ASCII-based


def cid_key(content_id: str) -> str:
    return content_id.lower()


def replace_cids(data: bytes, urls: Mapping[str, str]) -> tuple[bytes, set[str]]:
    """HTML bytes with each cid: URL that names a key of ``urls`` (``cid_key``) replaced by its URL;
    and the keys that were found."""
    used: set[str] = set()

    def swap(match: re.Match[bytes]) -> bytes:
        written = match.group(1).decode("ascii", "replace")
        key = cid_key(urllib.parse.unquote(html.unescape(written)))
        url = urls.get(key)
        if url is None:
            return match.group(0)
        used.add(key)
        return url.encode("ascii")

    return _CID_URL.sub(swap, data), used


# -- URLs ------------------------------------------------------------------------------------------


def hosted_url(public_url: str, signer: LinkSigner, message_id: str, image: Embedded) -> str:
    token = signer.sign(Link("hosted", message_id, image.position), image.name.encode("ascii"))
    return f"{public_url}{HOSTED_PATH}{token}/{image.name}"


def verify_hosted(signer: LinkSigner, token: str, name: str) -> Link | None:
    """The hosted image a URL names (``recipient_id`` is the message's id), or None."""
    link = signer.verify(token, name.encode("utf-8", "surrogateescape"))
    return link if link is not None and link.kind == "hosted" else None


def webversion_url(public_url: str, signer: LinkSigner, recipient_id: str) -> str:
    return f"{public_url}{WEBVERSION_PATH}{signer.sign(Link('webversion', recipient_id, 0))}"


def verify_webversion(signer: LinkSigner, token: str) -> Link | None:
    link = signer.verify(token)
    return link if link is not None and link.kind == "webversion" else None
