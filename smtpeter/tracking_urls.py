"""Where tracking links point: the URL layout under ``http.public_url``.

Made at delivery (outbound/tracking.py, the hosted images) and read back by
the HTTP listener (the redirector, the pixel, the image proxy)::

    {base}/c/{token}/{scheme}/{host}{path}[?{query}][#{fragment}]   a click on scheme://host path?query
    {base}/i/{token}/{scheme}/{host}{path}[?{query}]                an image, loaded through our proxy
    {base}/c/{token}/~/{base64url of the URL}[#{fragment}]           the same, for a URL that does not
                                                                     survive being a path (see below)
    {base}/o/{token}.gif                                             the open pixel

SMTPeter keeps the path readable ("we leave the path intact and only add a
small identifier"): a reader who hovers over a link still sees where it goes.
The token (smtpeter/links.py, 43 characters) is signed over the exact target URL that
follows it, so nothing but the URL we wrote can be reached through it.

The target is first put in the form a browser would send it in (what it would
percent-encode, it is percent-encoded here; tabs and line breaks go; a
backslash in the path is a slash), so the bytes that come back in the request
are the bytes we signed. A URL whose path a browser or a proxy would still
change (dot segments, empty segments) is carried opaquely, in base64url. The
fragment never reaches a server: it follows our URL, unsigned, and the browser
keeps it across the redirect (RFC 9110 §10.2.2).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from smtpeter.links import TOKEN_CHARS

CLICK, IMAGE, OPEN = "c", "i", "o"
OPAQUE = "~"  # stands where a scheme would; no scheme is spelled so
SCHEMES = ("http", "https")

_UNRESERVED = "A-Za-z0-9\\-._~"
_SUB_DELIMS = "!$&'()*+,;="
# What stays as written; everything else is percent-encoded (as UTF-8). In a path, what no
# browser changes; in a query the same but "'" (which browsers encode there) and with "?".
_NOT_IN_PATH = re.compile(f"[^{_UNRESERVED}{re.escape(_SUB_DELIMS)}:@/%]")
_NOT_IN_QUERY = re.compile(f"[^{_UNRESERVED}{re.escape(_SUB_DELIMS.replace(chr(39), ''))}:@/?%]")
_NOT_IN_FRAGMENT = re.compile(f"[^{_UNRESERVED}{re.escape(_SUB_DELIMS)}:@/?%]")
_AUTHORITY = re.compile(f"[{_UNRESERVED}{re.escape(_SUB_DELIMS)}:@\\[\\]%]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_DOT_SEGMENT = re.compile(r"/(?:\.|%2e){1,2}(?=/|$)", re.I)
_TOKEN = re.compile(rb"[A-Za-z0-9_\-]{%d}" % TOKEN_CHARS)
_BASE64URL = re.compile(rb"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class Target:
    """A trackable URL: ``url`` is what we sign and send the reader to, ``path`` how our link
    spells it after the token, ``fragment`` what follows our link (``#...`` or empty)."""

    url: str
    path: str
    fragment: str = ""


def target(url: str) -> Target | None:
    """The trackable form of an http(s) URL as written in a message; None for anything else
    (mailto:, tel:, a relative link, an anchor, a URL without a host)."""
    url = url.strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14"
                    "\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f ")
    url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    url, hash_mark, fragment = url.partition("#")
    scheme = _SCHEME.match(url)
    if scheme is None or scheme.group(1).lower() not in SCHEMES:
        return None
    rest = url[scheme.end():].replace("\\", "/")  # what browsers do in http(s) URLs
    if not rest.startswith("//"):
        return None
    rest, question, query = rest[2:].partition("?")
    authority, slash, path = rest.partition("/")
    if not authority or not _AUTHORITY.fullmatch(authority) or not authority.isascii():
        return None
    name = scheme.group(1).lower()
    try:
        path = _NOT_IN_PATH.sub(_escape, slash + path)
        query = _NOT_IN_QUERY.sub(_escape, query)
        fragment = hash_mark + _NOT_IN_FRAGMENT.sub(_escape, fragment)
    except UnicodeEncodeError:  # a lone surrogate: no browser could have followed it either
        return None
    clean = f"{name}://{authority}{path}{question}{query}"
    if _DOT_SEGMENT.search(f"/{authority}{path}") or "//" in path:
        return Target(clean, f"{OPAQUE}/{_b64(clean)}", fragment)
    return Target(clean, f"{name}/{authority}{path}{question}{query}", fragment)


def link_url(base: str, kind: str, token: str, where: Target, fragment: bool = True) -> str:
    """Our URL of ``kind`` (CLICK or IMAGE) for ``where``, under ``base`` (http.public_url)."""
    return f"{base}/{kind}/{token}/{where.path}{where.fragment if fragment else ''}"


def click_url(base: str, token: str, where: Target) -> str:
    return link_url(base, CLICK, token, where)


def image_url(base: str, token: str, where: Target) -> str:
    """The image proxy's URL for the image at ``where`` (no fragment: it means nothing there)."""
    return link_url(base, IMAGE, token, where, fragment=False)


def pixel_url(base: str, token: str) -> str:
    return f"{base}/{OPEN}/{token}.gif"


def parse_link(uri: bytes, prefix: bytes = b"") -> tuple[str, str, str] | None:
    """(kind, token, target URL) from a request target (``/c/TOKEN/https/host/path?query``,
    after ``prefix``, the path of http.public_url), or None if it is not one of ours.

    The token is not checked here: verify it against the target URL (links.LinkSigner).
    """
    if prefix:
        if not uri.startswith(prefix + b"/"):
            return None
        uri = uri[len(prefix):]
    if len(uri) < 4 + TOKEN_CHARS or uri[0:1] != b"/" or uri[2:3] != b"/" or uri[1:2] not in (b"c", b"i"):
        return None
    token = uri[3:3 + TOKEN_CHARS]
    if not _TOKEN.fullmatch(token) or uri[3 + TOKEN_CHARS:4 + TOKEN_CHARS] != b"/":
        return None
    rest = uri[4 + TOKEN_CHARS:]
    where, question, query = rest.partition(b"?")
    scheme, _, location = where.partition(b"/")
    if scheme == b"~":
        if question or not _BASE64URL.fullmatch(location):
            return None
        try:
            url = base64.urlsafe_b64decode(location + b"=" * (-len(location) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        if not url.startswith(("http://", "https://")):
            return None
    elif scheme in (b"http", b"https") and location and not location.startswith(b"/"):
        try:
            url = (scheme + b"://" + location + question + query).decode("ascii")
        except UnicodeDecodeError:
            return None
    else:
        return None
    return uri[1:2].decode(), token.decode(), url


def parse_image_url(uri: bytes, prefix: bytes = b"") -> tuple[str, str] | None:
    """(token, image URL) of an image proxy request target, or None."""
    parsed = parse_link(uri, prefix)
    if parsed is None or parsed[0] != IMAGE:
        return None
    return parsed[1], parsed[2]


def parse_pixel(uri: bytes, prefix: bytes = b"") -> str | None:
    """The token of an open pixel's request target (``/o/TOKEN.gif``, any query ignored), or None."""
    if prefix:
        if not uri.startswith(prefix + b"/"):
            return None
        uri = uri[len(prefix):]
    path = uri.partition(b"?")[0]
    if len(path) != 3 + TOKEN_CHARS + 4 or not path.startswith(b"/o/") or not path.endswith(b".gif"):
        return None
    token = path[3:3 + TOKEN_CHARS]
    return token.decode() if _TOKEN.fullmatch(token) else None


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{octet:02X}" for octet in match.group().encode("utf-8"))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")
