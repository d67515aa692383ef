"""Click and open tracking (``trackclicks``, ``trackopens``, ``preventscam``): a per-recipient step.

Each recipient's copy gets links signed for that recipient (smtpeter/links.py,
laid out by smtpeter/tracking_urls.py):

* clicks: every http(s) ``<a href>`` and ``<area href>`` in HTML parts, the
  ``href`` of Outlook's VML buttons in conditional comments, and every http(s)
  URL in text parts goes through the redirector; a hidden honeypot link opens
  the body of each HTML part (events/bots.py);
* opens: every http(s) ``<img src>`` loads through the image proxy, each load
  an open; an HTML part without such an image gets a 1x1 pixel at its end.

Left alone: ``mailto:``, ``tel:``, anchors and everything that is not http(s);
links to our own ``http.public_url`` (hosted images, the web version);
unsubscribe links: a link whose target is a URL of the message's
``List-Unsubscribe`` header, or whose URL or visible text (in a text part: its
line) holds one of ``UNSUBSCRIBE_WORDS``; and with ``preventscam``, a link
whose visible text is a web address (``https://...``, ``www.example.com``,
``example.com/offer``), since a mail client warns when such a text and the
real target differ; for the same reason, no URL in a text part is rewritten
(its visible text is always the URL itself).

Only the URLs change, byte for byte: the HTML is never parsed into a tree and
written out again (lxml's HTML parser would move a button's ``<table>`` out of
its ``<a>``, drop what follows ``</html>`` and add a doctype that changes how
the page renders). The standard library's tokenizer (html.parser) finds the
tags, and each value is replaced where it stands. Other parts, and the header
but for a part's Content-Transfer-Encoding (quoted-printable where a longer
link would make a line too long for 7bit/8bit), stay as they were.

The work is done once per message: the first recipient's call makes a
``Template`` (the MIME tree parsed, the HTML tokenized, every part re-encoded
with placeholder tokens, split around them), kept in the worker process while
the message is in work (``_templates``); every recipient then costs one
HMAC per link and a join of byte strings (base64 parts are encoded per
recipient). Tokens are base64url, which neither HTML nor quoted-printable
changes, so a token's bytes can be put straight into the encoded body (a
quoted-printable soft line break inside one is kept where it fell).
"""

from __future__ import annotations

import bisect
import codecs
import html
import html.entities
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

from smtpeter import tracking_urls
from smtpeter.events.bots import HONEYPOT_POSITION
from smtpeter.links import TOKEN_CHARS, Link, LinkSigner
from smtpeter.mime import tree
from smtpeter.mime.lines import has_long_line
from smtpeter.outbound.job import OutboundJob, PreparedMessage, StepSettings
from smtpeter.storage.models import StoredMessage

UNSUBSCRIBE_WORDS = ("unsubscribe", "opt-out", "optout", "afmelden", "uitschrijven", "abmelden",
                     "abbestellen", "desabonner", "désabonner", "desinscri", "désinscri")
TEMPLATE_BYTES = 64 * 1024 * 1024  # of messages whose templates a worker keeps, newest first
_URL_IN_TEXT = re.compile(r"\bhttps?://[^\s<>\"]+", re.I)
_TRAILING = ".,;:!?'\"*"
_WEB_ADDRESS = re.compile(r"(?:https?://|www\.)\S*|[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}(?:[/:?#]\S*)?", re.I)
_ATTRIBUTE = re.compile(r"""[\s/]*([^\s/>][^\s/=>]*)(?:\s*=\s*("[^"]*"|'[^']*'|(?!['"])[^>\s]*))?""")
_VML_HREF = re.compile(r"""(\bhref\s*=\s*)("[^"]*"|'[^']*')""", re.I)
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_LIST_UNSUBSCRIBE = re.compile(r"<([^>]*)>")
_TAG_NAME = re.compile(r"<?[^\s/>]*")


def needed(prepared: PreparedMessage) -> bool:
    options = prepared.message.options
    return bool(options.trackclicks or options.trackopens)


def run(job: OutboundJob, settings: StepSettings) -> OutboundJob:
    """This recipient's copy of the message, its links signed for it: on the sender domain's
    tracking host when it has one, else on http.public_url."""
    base = job.auth.tracking_base if job.auth is not None and job.auth.tracking_base else None
    made = template(job.message, job.content, settings.public_url, base)
    if made.unchanged:
        return job
    return job.with_content(made.render(_signer(settings.link_keys), job.recipient_ids[0]))


# -- the per-message template ------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One signed link of the message: what its token names besides the recipient."""

    kind: str  # "click", "image" or "open"
    position: int
    subject: bytes  # what the token vouches for: the target URL ("" for the pixel)


@dataclass(frozen=True)
class _Base64Body:
    chunks: tuple[bytes | tuple[int, int, int], ...]


# A piece of a template: bytes, a slice (slot, start, end) of a slot's token, or a base64 body.
_Chunk = bytes | tuple[int, int, int] | _Base64Body


@dataclass
class Template:
    """A message with a hole for each token: ``chunks`` are bytes, ``(slot, start, end)`` (that
    slice of a slot's token) or a base64 body to encode per recipient."""

    slots: tuple[Slot, ...] = ()
    chunks: tuple[_Chunk, ...] = ()

    @property
    def unchanged(self) -> bool:
        return not self.slots

    def render(self, signer: LinkSigner, recipient_id: str) -> bytes:
        tokens = [signer.sign(Link(slot.kind, recipient_id, slot.position), slot.subject).encode("ascii")
                  for slot in self.slots]
        return b"".join(_fill(self.chunks, tokens))


def _fill(chunks: Sequence[_Chunk], tokens: list[bytes]) -> list[bytes]:
    out = []
    for chunk in chunks:
        if chunk.__class__ is bytes:
            out.append(chunk)
        elif chunk.__class__ is tuple:
            index, start, end = chunk
            out.append(tokens[index][start:end])
        else:
            out.append(tree.encode_base64(b"".join(_fill(chunk.chunks, tokens))))
    return out


_templates: OrderedDict[tuple[str, str, tuple[bool, ...]], tuple[bytes, Template]] = OrderedDict()
_templates_bytes = 0
_lock = threading.Lock()
_signers: dict[tuple[bytes, ...], LinkSigner] = {}


def template(message: StoredMessage, content: bytes, public_url: str, base: str | None = None) -> Template:
    """The message's template: made once, then kept while it is in work. Links go to ``base``
    (a tracking host) if given, else to ``public_url``; links to either are ours and left alone."""
    global _templates_bytes
    options = message.options
    key = (message.id, base or public_url, (bool(options.trackclicks), bool(options.trackopens),
                                            bool(options.preventscam)))
    with _lock:
        found = _templates.get(key)
        if found is not None and (found[0] is content or found[0] == content):
            _templates.move_to_end(key)
            return found[1]
    made = make_template(content, base or public_url, *key[2], public_url)
    with _lock:
        if key in _templates:
            _templates_bytes -= len(_templates.pop(key)[0])
        _templates[key] = (content, made)
        _templates_bytes += len(content)
        while _templates_bytes > TEMPLATE_BYTES and len(_templates) > 1:
            _templates_bytes -= len(_templates.popitem(last=False)[1][0])
    return made


def _signer(keys: tuple[bytes, ...]) -> LinkSigner:
    signer = _signers.get(keys)
    if signer is None:
        signer = _signers[keys] = LinkSigner(keys)
    return signer


@dataclass
class _Links:
    """The message's slots, numbered in document order across its parts."""

    public_url: str
    unsubscribe: set[str]
    also_ours: str | None = None  # http.public_url, when links go to a tracking host
    slots: list[Slot] = field(default_factory=list)
    next_position: int = 1

    def add(self, kind: str, subject: str, position: int | None = None) -> int | None:
        """A new slot; None when the message has used every position."""
        if position is None:
            if self.next_position >= HONEYPOT_POSITION:
                return None
            position, self.next_position = self.next_position, self.next_position + 1
        self.slots.append(Slot(kind, position, subject.encode("ascii")))
        return len(self.slots) - 1

    def trackable(self, url: str) -> tracking_urls.Target | None:
        where = tracking_urls.target(url)
        if where is None or any(where.url.startswith(ours + "/") or where.url == ours
                                for ours in (self.public_url, self.also_ours) if ours):
            return None
        return where

    def unsubscribes(self, where: tracking_urls.Target, text: str) -> bool:
        if where.url in self.unsubscribe:
            return True
        haystack = f"{where.url} {text}".lower()
        return any(word in haystack for word in UNSUBSCRIBE_WORDS)


# A rewritten body: text, and (before, slot, after) where a link goes: the link is before + token + after.
_Pieces = list[str | tuple[str, int, str]]


def make_template(content: bytes, public_url: str, clicks: bool, opens: bool, preventscam: bool,
                  also_ours: str | None = None) -> Template:
    """Parse the message once and make the template of its tracked copies, its links on
    ``public_url``; links to ``also_ours`` are left alone as well."""
    root = tree.parse(content)
    links = _Links(public_url, _list_unsubscribe(root), also_ours=also_ours)
    marker = b"\x00" + secrets.token_hex(12).encode() + b"-"
    bodies: list[list[_Chunk]] = []
    for part in list(root.walk()):
        if part.is_multipart or _is_attachment(part):
            continue
        kind = part.content_type
        if kind not in ("text/html", "text/plain") or (kind == "text/plain" and (not clicks or preventscam)):
            continue
        charset = part.params.get("charset", "us-ascii") or "us-ascii"
        if not _ascii_compatible(charset):
            continue
        text = part.decoded().decode(charset, "surrogateescape")
        if kind == "text/html":
            pieces = _rewrite_html(text, links, public_url, clicks, opens, preventscam)
        else:
            pieces = _rewrite_text(text, links, public_url)
        if pieces is None:
            continue
        bodies.append(_encode(part, pieces, charset))
        part.body = marker + b"%d\x00" % (len(bodies) - 1)
    if not links.slots:
        return Template()
    chunks: list[_Chunk] = []
    for number, between in enumerate(tree.serialize(root).split(marker)):
        if number:
            index, between = between.split(b"\x00", 1)
            chunks.extend(bodies[int(index)])
        chunks.append(between)
    return Template(tuple(links.slots), tuple(c for c in chunks if c != b""))


def _encode(part: tree.Part, pieces: _Pieces, charset: str) -> list[_Chunk]:
    """The part's new body as chunks (its Content-Transfer-Encoding set to fit)."""
    # A placeholder token: 16 random characters, the slot's number, padding to a token's length.
    prefix, padding = secrets.token_urlsafe(12), "x" * (TOKEN_CHARS - 22)
    placeholder = re.compile(re.escape(prefix).encode() + rb"(\d{6})" + padding.encode())
    text = "".join(p if isinstance(p, str) else f"{p[0]}{prefix}{p[1]:06d}{padding}{p[2]}" for p in pieces)
    data = text.encode(charset, "surrogateescape")
    encoding = part.transfer_encoding
    if encoding not in ("base64", "quoted-printable") and (
            has_long_line(data, 998) or (encoding not in ("8bit", "binary") and not data.isascii())):
        encoding = "quoted-printable"
    if encoding != part.transfer_encoding:
        part.set_field("Content-Transfer-Encoding", encoding)
    if encoding == "base64":
        return [_Base64Body(tuple(_split(data, placeholder)))]
    if encoding == "quoted-printable":
        return _split(tree.encode_quoted_printable(data), placeholder, soft_breaks=True)
    return _split(data, placeholder)


def _split(data: bytes, placeholder: re.Pattern[bytes],
           soft_breaks: bool = False) -> list[_Chunk]:
    """``data`` cut around its placeholder tokens; with ``soft_breaks``, a quoted-printable soft
    line break inside a token is kept where it fell."""
    lines = data.split(b"=\r\n") if soft_breaks else [data]
    breaks, flat, length = [], b"".join(lines), 0
    for line in lines[:-1]:
        length += len(line)
        breaks.append(length)  # a soft line break before this offset of ``flat``
    out: list[_Chunk] = []
    position = 0

    def static(start: int, end: int) -> None:  # with the breaks at its ends (a token's are inside it)
        cut = start
        for at in breaks[bisect.bisect_left(breaks, start):bisect.bisect_right(breaks, end)]:
            out.append(flat[cut:at] + b"=\r\n")
            cut = at
        out.append(flat[cut:end])

    for found in placeholder.finditer(flat):
        static(position, found.start())
        index, cut = int(found.group(1)), found.start()
        for at in breaks[bisect.bisect_right(breaks, found.start()):bisect.bisect_left(breaks, found.end())]:
            out.append((index, cut - found.start(), at - found.start()))
            out.append(b"=\r\n")
            cut = at
        out.append((index, cut - found.start(), TOKEN_CHARS))
        position = found.end()
    static(position, len(flat))
    return [chunk for chunk in out if chunk != b""]


# -- HTML -----------------------------------------------------------------------------------------------


class _Scanner(HTMLParser):
    """Finds, with their offsets in the source, the values to rewrite and where the body starts and ends."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text = text
        self._lines = [0] + [m.end() for m in re.finditer("\n", text)]
        self.values: list[tuple[str, int, int, str]] = []  # (tag, start, end of the quoted value, value)
        self.texts: dict[int, list[str]] = {}  # an <a>'s visible text, by its index in ``values``
        self._anchor: int | None = None
        self.body_start: int | None = None
        self.body_end: int | None = None
        self.head_end: int | None = None
        self.html_start: int | None = None
        self.html_end: int | None = None
        self.declaration_end: int | None = None

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._lines[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or ""
        start = self._offset()
        if tag == "a":
            self._anchor = None  # a new <a> ends the one before (HTML5)
        if tag in ("a", "area", "img"):
            found = _attribute(raw, "src" if tag == "img" else "href")
            if found is not None:
                value_start, value_end, value = found
                self.values.append((tag, start + value_start, start + value_end, value))
                if tag == "a":
                    self._anchor = len(self.values) - 1
                    self.texts[self._anchor] = []
        elif tag == "body" and self.body_start is None:
            self.body_start = start + len(raw)
        elif tag == "html" and self.html_start is None:
            self.html_start = start + len(raw)

    def handle_decl(self, decl: str) -> None:
        if self.declaration_end is None:
            self.declaration_end = self._offset() + len(decl) + 3  # <!...>

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._anchor = None
        elif tag == "body" and self.body_end is None:
            self.body_end = self._offset()
        elif tag == "head" and self.head_end is None:
            self.head_end = self._offset() + len("</head>")
        elif tag == "html" and self.html_end is None:
            self.html_end = self._offset()

    def handle_data(self, data: str) -> None:
        if self._anchor is not None:
            self.texts[self._anchor].append(data)

    def handle_comment(self, data: str) -> None:
        # Outlook's conditional comments hold its VML buttons: <v:roundrect href="...">.
        if data.lstrip().lower().startswith("[if"):
            start = self._offset() + 4  # past "<!--"
            for found in _VML_HREF.finditer(data):
                value = _attribute_text(found.group(2)[1:-1])
                self.values.append(("v", start + found.start(2), start + found.end(2), value))


def _attribute(raw_tag: str, name: str) -> tuple[int, int, str] | None:
    """The first ``name`` attribute of a start tag with a value: where the value (its quotes
    included) stands in the tag, and what it says."""
    position = _TAG_NAME.match(raw_tag).end()
    while True:
        found = _ATTRIBUTE.match(raw_tag, position)
        if found is None or found.end() == position:
            return None
        position = found.end()
        if found.group(1).lower() == name:
            value = found.group(2)
            if value is None:
                return None
            inner = value[1:-1] if value[:1] in ("'", '"') else value
            return found.start(2), found.end(2), _attribute_text(inner)


def _attribute_text(raw: str) -> str:
    """An attribute value with its character references resolved as HTML5 does in attributes
    (``&copy=1`` in a URL stays as it is)."""
    def resolve(found: re.Match[str]) -> str:
        reference = found.group(1)
        if reference.startswith("#"):
            return html.unescape(found.group())
        if reference.endswith(";"):
            return html.unescape(found.group()) if reference in html.entities.html5 else found.group()
        following = raw[found.end():found.end() + 1]
        if reference in html.entities.html5 and following != "=":
            return html.unescape(found.group())
        return found.group()

    return _CHARREF.sub(resolve, raw) if "&" in raw else raw


def _rewrite_html(text: str, links: _Links, public_url: str, clicks: bool, opens: bool,
                  preventscam: bool) -> _Pieces | None:
    scanner = _Scanner(text)
    scanner.feed(text)
    scanner.close()
    edits: list[tuple[int, int, str, int, str]] = []  # start, end, before, slot, after
    images = 0
    for index, (tag, start, end, value) in enumerate(scanner.values):
        where = links.trackable(value)
        if where is None:
            continue
        if tag == "img":
            if not opens:
                continue
            slot = links.add("image", where.url)
            url = tracking_urls.image_url(public_url, "\0", where)
            images += 1
        else:
            if not clicks:
                continue
            visible = " ".join("".join(scanner.texts.get(index, ())).split())
            if links.unsubscribes(where, visible) or (preventscam and _WEB_ADDRESS.fullmatch(visible)):
                continue
            slot = links.add("click", where.url)
            url = tracking_urls.click_url(public_url, "\0", where)
        if slot is None:
            continue
        before, _, after = html.escape(url, quote=True).partition("\0")
        edits.append((start, end, '"' + before, slot, after + '"'))
    # The honeypot opens the body (never before the doctype: that would change how the page renders).
    body_start = next((at for at in (scanner.body_start, scanner.head_end, scanner.html_start,
                                     scanner.declaration_end) if at is not None), 0)
    if clicks:
        where = tracking_urls.target(public_url + "/")
        slot = links.add("click", where.url, HONEYPOT_POSITION) if where is not None else None
        if slot is not None:
            url = html.escape(tracking_urls.click_url(public_url, "\0", where), quote=True)
            before, _, after = url.partition("\0")
            edits.append((body_start, body_start, '<div style="display:none;max-height:0;overflow:hidden;'
                          'mso-hide:all" aria-hidden="true"><a href="' + before, slot,
                          after + '" tabindex="-1" style="display:none">&#8203;</a></div>'))
    if opens and not images:
        slot = links.add("open", "", 0)
        end = scanner.body_end if scanner.body_end is not None else scanner.html_end
        end = len(text) if end is None else end
        url = html.escape(tracking_urls.pixel_url(public_url, "\0"), quote=True)
        before, _, after = url.partition("\0")
        edits.append((end, end, '<img src="' + before, slot,
                      after + '" width="1" height="1" alt="" border="0" style="display:block;width:1px;'
                      'height:1px;border:0;margin:0;padding:0">'))
    return _apply(text, edits) if edits else None


def _apply(text: str, edits: list[tuple[int, int, str, int, str]]) -> _Pieces:
    pieces: _Pieces = []
    position = 0
    for start, end, before, slot, after in sorted(edits, key=lambda edit: (edit[0], edit[1])):
        pieces.append(text[position:start])
        pieces.append((before, slot, after))
        position = end
    pieces.append(text[position:])
    return pieces


# -- text ------------------------------------------------------------------------------------------------


def _rewrite_text(text: str, links: _Links, public_url: str) -> _Pieces | None:
    edits = []
    for found in _URL_IN_TEXT.finditer(text):
        url = _trim(found.group())
        where = links.trackable(url)
        if where is None:
            continue
        line_start = text.rfind("\n", 0, found.start()) + 1
        line_end = text.find("\n", found.end())
        if links.unsubscribes(where, text[line_start:line_end if line_end >= 0 else len(text)]):
            continue
        slot = links.add("click", where.url)
        if slot is None:
            continue
        before, _, after = tracking_urls.click_url(public_url, "\0", where).partition("\0")
        edits.append((found.start(), found.start() + len(url), before, slot, after))
    return _apply(text, edits) if edits else None


def _trim(url: str) -> str:
    """A URL found in text without the punctuation that ends its sentence or closes a bracket."""
    while url:
        last = url[-1]
        if last in _TRAILING or (last == ")" and url.count("(") < url.count(")")) or (
                last == "]" and url.count("[") < url.count("]")):
            url = url[:-1]
        else:
            break
    return url


# -- the MIME around them ------------------------------------------------------------------------------


def _list_unsubscribe(root: tree.Part) -> set[str]:
    found = root.header("list-unsubscribe")
    if found is None:
        return set()
    urls = set()
    for url in _LIST_UNSUBSCRIBE.findall(found.value):
        where = tracking_urls.target(url)
        if where is not None:
            urls.add(where.url)
    return urls


def _is_attachment(part: tree.Part) -> bool:
    found = part.header("content-disposition")
    return found is not None and found.value.split(";")[0].strip().lower() == "attachment"


def _ascii_compatible(charset: str) -> bool:
    """Whether the charset writes ASCII as ASCII (utf-8, iso-8859-*, windows-125*; not utf-16),
    so markup and URLs can be read and written in it as bytes."""
    try:
        codec = codecs.lookup(charset)
        return codec._is_text_encoding and "<a href='x:/?&#;'>".encode(codec.name) == b"<a href='x:/?&#;'>"
    except (LookupError, UnicodeError, ValueError):
        return False
