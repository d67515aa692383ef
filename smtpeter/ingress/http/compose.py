"""Building a MIME message from the JSON fields of ``/v1/send``.

Header fields are written by this module, never by the ``email`` package's
header parser: that parser decodes RFC 2047 encoded-words in what it is
given and writes the decoded text out raw (CVE-2024-6923), so an
``=?utf-8?q?=0D=0A...?=`` in a subject would become a header of its own.
Here every header-bound text is decoded first, checked, and encoded again by
us, folded so that no line passes 78 characters (RFC 5322 §2.1.1; a long
field name aside), with encoded-words where text has no space to fold at.
The stdlib builds only the body tree (parts, transfer encodings, attachment
parameters), and the result is parsed once more to prove it has exactly the
header fields we meant.
"""

from __future__ import annotations

import binascii
import email.errors
import email.header
import email.policy
import io
import mimetypes
import re
import secrets
import unicodedata
from email.message import EmailMessage, MIMEPart
from typing import IO, Any

from smtpeter.ingress.http.fields import BadRequest, boolean_field, elements, mailbox, text_field
from smtpeter.mime import header as msg
from smtpeter.mime import tree
from smtpeter.mime.encoded_words import MAX_ENCODED_WORD, encoded_words

_EXTRA_HEADER = re.compile(r"[Xx]-[A-Za-z0-9][A-Za-z0-9-]*")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
# A word of a display name: a quoted string, an encoded-word (decoded and checked later), or
# a run of characters that are not specials ("." and "@" pass: "Dr. Who", "a@b <c@d>").
_PHRASE_WORD = re.compile(r'\s*(?:(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<encoded>=\?[^?\s]+\?[A-Za-z]\?[^?\s]*\?=)'
                          r'|(?P<atom>[^\s"<>()\[\]:;,\\]+))\s*', re.S)
# Windows opens these as devices, whatever the extension or case ("con.txt", "Lpt1.pdf").
_WINDOWS_DEVICE = re.compile(r"CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00b9\u00b2\u00b3]|"
                             r"LPT[0-9\u00b9\u00b2\u00b3]", re.IGNORECASE)
# Zero-width (non-)joiners are invisible formatting too, but Persian and Indic words and
# emoji need them, and they cannot reorder text. Every other format character (bidi
# overrides, embeddings, isolates and marks, soft hyphens, word joiners...) is refused.
_JOINERS = {"\u200c", "\u200d"}
# RFC 6838 §4.2: type and subtype names of at most 127 characters.
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
_ENCODED_WORD_FRAME = len("=?utf-8?q??=")
_MIN_FIRST_WORD = _ENCODED_WORD_FRAME + 12  # room for one 4-byte character, Q-encoded
_MAX_ATTACHMENT_NAME = 255
_BASE64_STEP = 4 * 65536  # characters of an attachment's base64 handled at a time
MAX_HEADER_TEXT = 2000  # characters in a subject, a display name, an x-* value
MAX_ADDRESSES = 1000  # in to, cc and replyto together
MAX_EXTRA_HEADERS = 100
MAX_HEADER_NAME = 76  # "Name:" fits a line of 78
MAX_URL = 900  # List-Unsubscribe may not be folded inside <...> (RFC 2369 §2); a line holds 998
_PART_FIELDS = {"content-type", "content-transfer-encoding", "content-disposition", "mime-version",
                "content-id"}


def header_text(name: str, value: Any, *, allow_empty: bool = True) -> str:
    """User text bound for a header, with any encoded-words decoded so what they hide is checked."""
    text = text_field(name, value, allow_empty=allow_empty)
    if len(text) > MAX_HEADER_TEXT:
        raise BadRequest(f"'{name}' is longer than {MAX_HEADER_TEXT} characters")
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
            raise BadRequest(f"'{name}' holds a malformed encoded-word") from None
        text_field(name, text, allow_empty=True)  # what the encoded-words held must pass too
    return text


def _encoded(text: str, first: int = MAX_ENCODED_WORD) -> list[str]:
    return [word.decode("ascii") for word in encoded_words(text.encode("utf-8"), first)]


def _words(text: str, first: int, phrase: bool = False) -> list[str]:
    """``text`` as the words of a header value, for _fold; ``first`` is what the field name
    takes of the first line.

    Printable ASCII words stay as they are (in a ``phrase``, a display name, quoted where they
    hold specials); runs of other words (non-ASCII, too long for their line, or holding "=?")
    become encoded-words. A decoder keeps the space between a plain word
    and an encoded-word but drops it between two encoded-words (RFC 2047 §6.2), so a run is
    encoded as one text, its spaces inside. Text whose white space folding would change (tabs,
    double, leading or trailing spaces) is encoded whole.
    """
    budget = max(78 - first, _MIN_FIRST_WORD)
    if " ".join(text.split()) != text:
        return _encoded(text, budget)
    runs: list[tuple[bool, list[str]]] = []
    for word in text.split(" "):
        # Room on its line: the first shares one with the field name; quotes may come in a phrase.
        width = len(word) + (word.count('"') + word.count("\\") + 2 if phrase else 0)
        plain = (word.isascii() and word.isprintable() and "=?" not in word
                 and width <= (budget if not runs else 77))
        if runs and runs[-1][0] == plain:
            runs[-1][1].append(word)
        else:
            runs.append((plain, [word]))
    words: list[str] = []
    for plain, run in runs:
        joined = " ".join(run)
        if not plain:
            words += _encoded(joined, budget if not words else MAX_ENCODED_WORD)
        elif phrase and not _ATOMS.fullmatch(joined):
            # A quoted string may be folded at its spaces too (RFC 5322 §3.2.4).
            words += ('"' + joined.replace("\\", "\\\\").replace('"', '\\"') + '"').split(" ")
        else:
            words += run
    return words


def _fold(words: list[str], first: int) -> str:
    """Join ``words`` with spaces, breaking lines (CRLF SP) before a word that would pass column
    78; ``first`` is what the field name takes of the first line. Unfolding gives back the words
    joined by single spaces."""
    lines, line, width = [], "", first
    for word in words:
        if line and width + len(line) + 1 + len(word) > 78:
            lines.append(line)
            line, width = word, 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n ".join(lines)


def unstructured(name: str, text: str) -> bytes:
    """One unstructured header field (RFC 5322 §3.2.5); no line passes 78 characters but one
    with a long field name."""
    return f"{name}: {_fold(_words(text, len(name) + 2), len(name) + 2)}\r\n".encode("ascii")


def addresses(name: str, value: Any) -> list[tuple[str, str]]:
    """(display name, address) pairs from a string, a comma list, a list, or a mix.

    Parsed here, not by ``email.utils.getaddresses``: that reads what it does not
    understand as a group name or a comment and drops it, so ``=?utf-8?q?x=0D=0AX-Inj:_1?=
    <r@x>`` became ``_1?= <r@x>``. Every character given must belong to an address or its
    display name, or the request is refused.
    """
    items = elements(name, value)
    if len(items) > MAX_ADDRESSES:
        raise BadRequest(f"'{name}' holds more than {MAX_ADDRESSES} addresses")
    found = []
    for where, item in items:
        for piece in _split_list(text_field(where, item)):
            if piece.strip():  # "a@x, , b@y": an empty element holds nothing to lose
                found.append(_mailbox_item(where, piece.strip()))
    if not found:
        raise BadRequest(f"'{name}' holds no address")
    return found


def _split_list(text: str) -> list[str]:
    """``text`` cut at the commas outside quoted strings and angle brackets."""
    pieces, start, quoted, escaped, angle = [], 0, False, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return pieces


def _mailbox_item(where: str, text: str) -> tuple[str, str]:
    """One ``Name <address>``, ``<address>`` or ``address``: (decoded display name, address)."""
    if not text.endswith(">"):
        try:
            return "", mailbox(where, text)
        except BadRequest:
            raise BadRequest(f"'{where}': {text!r} is not an address{_why(text)}") from None
    opening = _QUOTED.sub(lambda m: "_" * len(m.group()), text).find("<")  # the first outside quotes
    words, position = [], 0
    while position < opening:
        match = _PHRASE_WORD.match(text, position, opening)
        if match is None:
            if text[position:opening].strip():
                raise BadRequest(f"'{where}': {text!r} is not an address{_why(text[:opening])}")
            break
        quoted = match["quoted"]
        words.append(re.sub(r"\\(.)", r"\1", quoted[1:-1]) if quoted else match[match.lastgroup])
        position = match.end()
    return header_text(where, " ".join(words)), mailbox(where, text[opening:])


def _why(text: str) -> str:
    outside = _QUOTED.sub("", text)
    if ":" in outside or ";" in outside:
        return " (group syntax, 'name: addresses;', is not supported)"
    if "(" in outside or ")" in outside:
        return " (comments in parentheses are not supported: quote the name)"
    return " (write 'Name <address>' or 'address'; quote a name that holds special characters)"


def address_field(name: str, pairs: list[tuple[str, str]]) -> bytes:
    first = len(name) + 2
    words: list[str] = []
    for display, address in pairs:
        if display:
            # Only the first address shares its line with the field name.
            words += _words(display, first if not words else 1, phrase=True)
        words.append(f"<{address}>," if display else f"{address},")
    return f"{name}: {_fold(words, first)[:-1]}\r\n".encode()


def _unsubscribe(value: Any) -> list[bytes]:
    """List-Unsubscribe (RFC 2369), and List-Unsubscribe-Post for one-click (RFC 8058). One-click
    without a url of the customer's means ours (the ``oneclick`` option, set by fields.py)."""
    if not isinstance(value, dict):
        raise BadRequest("'unsubscribe' must be an object with 'email' and/or 'url'")
    unknown = sorted(set(value) - {"email", "url", "oneclick"})
    if unknown:
        raise BadRequest(f"unknown field 'unsubscribe.{unknown[0]}'")
    targets = []
    if value.get("email"):
        address = mailbox("unsubscribe.email", value["email"])
        if not address.isascii():
            raise BadRequest("'unsubscribe.email' must be an ASCII address")
        targets.append(f"<mailto:{address}>")
    url = None
    if value.get("url"):
        url = text_field("unsubscribe.url", value["url"])
        if len(url) > MAX_URL:
            raise BadRequest(f"'unsubscribe.url' is longer than {MAX_URL} characters")
        if not re.fullmatch(r"https?://[\x21-\x7e]+", url) or ">" in url or "<" in url:
            raise BadRequest("'unsubscribe.url' must be an http(s) URL")
        targets.append(f"<{url}>")
    oneclick = value.get("oneclick") is not None and boolean_field("unsubscribe.oneclick", value["oneclick"])
    if not targets and not oneclick:
        raise BadRequest("'unsubscribe' needs 'email' or 'url' (or 'oneclick' for ours)")
    if not targets:
        return []  # ours, added at delivery (the oneclick option: outbound/unsubscribe.py)
    fields = [f"List-Unsubscribe: {_fold([t + ',' for t in targets], 18)[:-1]}\r\n".encode()]
    if oneclick and url:
        if not url.startswith("https://"):
            raise BadRequest("'unsubscribe.oneclick' needs an https 'url' (RFC 8058), or none for ours")
        fields.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    return fields


def _attachments(value: Any) -> list[tuple[str, str, str, str]]:
    """(where, base64 text, name, MIME type) of each attachment; the base64 is checked as it is
    written (_write_base64)."""
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
        encoded = text_field(f"{where}.data", item.get("data"), allow_empty=True, one_line=False)
        name = _file_name(f"{where}.name", item.get("name") or "attachment")
        content_type = item.get("type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
        content_type = text_field(f"{where}.type", content_type).split(";")[0].strip().lower()
        if not _MIME_TYPE.fullmatch(content_type):
            raise BadRequest(f"'{where}.type' must be a MIME type like application/pdf")
        if content_type.startswith(("multipart/", "message/")):
            raise BadRequest(f"'{where}.type': {content_type} cannot be sent as an attachment; "
                             "use application/octet-stream")
        found.append((where, encoded, name, content_type))
    return found


def _write_base64(out: IO[bytes], encoded: str) -> bool:
    """The client's base64 written to ``out`` as lines of 76 characters, decoded and encoded again
    a block at a time, so that a large attachment is never copied whole; False if it is not
    valid base64. (PHP's chunk_split and the base64 tool break lines: white space is not data.)"""
    pending, tail, padded = b"", b"", False
    for start in range(0, len(encoded), _BASE64_STEP):
        piece = encoded[start:start + _BASE64_STEP]
        if not piece.isascii():
            return False
        chunk = pending + piece.encode("ascii").translate(None, b" \t\r\n\x0b\x0c")
        whole = len(chunk) - len(chunk) % 4
        pending = chunk[whole:]
        if not whole:
            continue
        if padded:
            return False  # data after the padding
        try:
            tail += binascii.a2b_base64(chunk[:whole], strict_mode=True)
        except binascii.Error:
            return False
        padded = chunk[whole - 1] == ord("=")
        lines = len(tail) // 57 * 57  # 57 octets make a line of 76 characters
        _write_lines(out, tail[:lines])
        tail = tail[lines:]
    _write_lines(out, tail)
    return not pending


def _write_lines(out: IO[bytes], data: bytes) -> None:
    encoded = binascii.b2a_base64(data, newline=False)
    out.write(b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76)))


def _file_name(where: str, value: Any) -> str:
    """An attachment's name, refused (with the reason) where a recipient's system would read it
    as something else: a path, a device, a name whose shown extension is not its real one."""
    name = header_text(where, value, allow_empty=False)
    if len(name) > _MAX_ATTACHMENT_NAME:
        raise BadRequest(f"'{where}' is longer than {_MAX_ATTACHMENT_NAME} characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BadRequest(f"'{where}': {name!r} is a path, not a file name")
    if "=?" in name:
        raise BadRequest(f"'{where}' must be a plain file name, not an encoded-word")
    if name.rstrip(". ") != name:
        raise BadRequest(f"'{where}': {name!r} ends in a dot or space, which Windows drops from file names")
    if _WINDOWS_DEVICE.fullmatch(name.split(".")[0].rstrip(" ")):
        raise BadRequest(f"'{where}': {name!r} is a device name on Windows (with any extension)")
    for char in name:
        if unicodedata.category(char) == "Cf" and char not in _JOINERS:
            raise BadRequest(f"'{where}' holds the invisible formatting character U+{ord(char):04X} "
                             f"({unicodedata.name(char, 'unnamed')}), which can disguise a file's type")
    return name


def _write_body(out: IO[bytes], fields: dict[str, Any], smtputf8: bool) -> list[bytes]:
    """The MIME body (text, HTML, attachments) with its own Content-* fields, written to ``out``.

    The stdlib makes the text and HTML, and each attachment's fields (RFC 2231 file names);
    we join them in a multipart/mixed and stream the attachments' data in (_write_base64), as
    the stdlib would hold a large attachment several times over. Returns what the stdlib made:
    every byte of the body but the attachments' data and our boundary lines, for _verify.
    """
    # 7-bit bodies (quoted-printable or base64) survive any next hop unchanged.
    policy = (email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP).clone(
        max_line_length=78, cte_type="8bit" if smtputf8 else "7bit")
    attachments = _attachments(fields.get("attachments") or [])
    content = (MIMEPart if attachments else EmailMessage)(policy=policy)
    text = text_field("text", fields["text"], one_line=False) if fields.get("text") else None
    html = text_field("html", fields["html"], one_line=False) if fields.get("html") else None
    if text is not None:
        content.set_content(text)
        if html is not None:
            content.add_alternative(html, subtype="html")
    else:
        content.set_content(html, subtype="html")
    made = [content.as_bytes(policy=policy)]
    if not attachments:
        out.write(made[0])
        return made
    boundary = _boundary(made[0])
    out.write(f'Content-Type: multipart/mixed; boundary="{boundary}"\r\nMIME-Version: 1.0\r\n\r\n'
              f"--{boundary}\r\n".encode())
    out.write(made[0])
    for where, encoded, name, content_type in attachments:
        part = MIMEPart(policy=policy)
        maintype, subtype = content_type.split("/", 1)
        part.set_content(b"", maintype, subtype, disposition="attachment", filename=name, cte="base64")
        made.append(part.as_bytes(policy=policy))
        out.write(f"\r\n--{boundary}\r\n".encode())
        out.write(made[-1])
        if not _write_base64(out, encoded):
            raise BadRequest(f"'{where}.data' is not valid base64")
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return made


def _boundary(content: bytes) -> str:
    """A multipart boundary: "=_" is in no base64 or quoted-printable text, and the random
    rest is checked against the one part that may hold text as it is (7bit)."""
    while True:
        boundary = f"=_{secrets.token_hex(16)}"
        if boundary.encode() not in content:
            return boundary


def compose(fields: dict[str, Any], labels: dict[str, str] | None = None) -> tuple[bytes, bool]:
    """The message as CRLF bytes, and whether it needs SMTPUTF8 (non-ASCII addresses).

    ``labels`` are the client's names of fields it gave another way (SendRequest.labels),
    for error messages. Message-ID and Date are added with every other submission's
    (Submission.identity_headers).
    """
    labels = labels or {}
    senders = addresses(labels.get("from", "from"), fields["from"])
    if len(senders) != 1:
        raise BadRequest(f"'{labels.get('from', 'from')}' must be exactly one address")
    head = [address_field("From", senders)]
    every = list(senders)
    count = 0
    for name, header in (("to", "To"), ("cc", "Cc"), ("replyto", "Reply-To")):
        if fields.get(name):
            pairs = addresses(labels.get(name, name), fields[name])
            count += len(pairs)
            every += pairs
            head.append(address_field(header, pairs))
    if count > MAX_ADDRESSES:
        raise BadRequest(f"to, cc and replyto hold more than {MAX_ADDRESSES} addresses together")
    if fields.get("subject") is not None:
        head.append(unstructured("Subject", header_text(labels.get("subject", "subject"), fields["subject"])))
    if fields.get("unsubscribe"):
        head += _unsubscribe(fields["unsubscribe"])
    extra = fields.get("extra") or {}
    if not isinstance(extra, dict):
        raise BadRequest("'extra' must be an object of x-* header names and values")
    if len(extra) > MAX_EXTRA_HEADERS:
        raise BadRequest(f"'extra' holds more than {MAX_EXTRA_HEADERS} headers")
    for name, value in extra.items():
        where = labels.get(f"extra.{name}", f"extra.{name}")
        if not _EXTRA_HEADER.fullmatch(name):
            raise BadRequest(f"'{where}': only x-* headers may be added, not {name!r}")
        if len(name) > MAX_HEADER_NAME:
            raise BadRequest(f"'{where}': a header name has at most {MAX_HEADER_NAME} characters")
        if name.lower().startswith("x-smtpeter-"):
            raise BadRequest(f"'{where}': {name} is an instruction header; use the option field instead")
        head.append(unstructured(name, header_text(where, value)))
    smtputf8 = any(not address.isascii() for _, address in every)
    out = io.BytesIO()
    out.writelines(head)
    _verify(head, _write_body(out, fields, smtputf8))
    return out.getvalue(), smtputf8  # BytesIO hands over its buffer: no copy


def _verify(head: list[bytes], made: list[bytes]) -> None:
    """Refuse anything whose header is not exactly what we wrote (the last line of defence):
    our fields parse back as exactly themselves, and what the stdlib made holds part fields only."""
    expected = [msg.parse(field).fields[0].name for field in head]
    ok = [field.name for field in msg.parse(b"".join(head) + b"\r\n").fields] == expected
    for piece in made:
        ok = ok and all({field.name for field in part.fields} <= _PART_FIELDS
                        for part in tree.parse(piece).walk())
    if not ok:
        raise BadRequest("the message fields could not be encoded safely")


def raw(mime: bytes) -> tuple[bytes, bool]:
    """A whole message as the client gave it, with CRLF line ends; and whether it needs SMTPUTF8."""
    crlf = mime.count(b"\r\n")
    if mime.count(b"\n") != crlf or mime.count(b"\r") != crlf:  # JSON clients often send LF
        # One copy for the usual LF-only message; mixed line ends take a pass more each.
        if crlf:
            mime = mime.replace(b"\r\n", b"\n")
        if b"\r" in mime:
            mime = mime.replace(b"\r", b"\n")
        mime = mime.replace(b"\n", b"\r\n")
    if not mime.endswith(b"\r\n"):
        mime += b"\r\n"
    end = mime.find(b"\r\n\r\n")
    # Raw UTF-8 in the header (RFC 6532) can only travel with SMTPUTF8.
    return mime, not (mime if end < 0 else mime[:end]).isascii()

