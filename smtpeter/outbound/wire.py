"""Make a message fit the next hop, changing only the parts that need it.

``make_7bit`` is the RFC 6152 downgrade for a peer without 8BITMIME;
``limit_line_length`` keeps every line within RFC 5322 §2.1.1. Both leave
every part and header field they do not have to touch byte for byte as it
was, and give back the very same object when nothing needed doing.
"""

from __future__ import annotations

import re

from smtpeter.mime import tree
from smtpeter.mime.encoded_words import MAX_ENCODED_WORD, encoded_words
from smtpeter.mime.header import Field
from smtpeter.mime.lines import break_long_lines, fold, fold_long_lines, has_long_line
from smtpeter.mime.tree import Part


class CannotDowngrade(Exception):
    """The message needs SMTPUTF8 and the peer lacks it (caller fails the recipient with 5.6.7)."""


# Fields whose 8-bit text becomes RFC 2047 encoded-words as a whole (and any X-*).
_UNSTRUCTURED = frozenset({"subject", "comments", "content-description", "organization", "thread-topic"})
# Fields holding mailboxes: display names and comments are encoded, addresses cannot be.
_ADDRESS_LISTS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
    "disposition-notification-to",
})
_WITH_PARAMETERS = frozenset({"content-type", "content-disposition"})
_MAX_NESTING = 20  # message/rfc822 within message/rfc822 ...
_FOLD_WIDTH = 76  # RFC 2047 §2: a line holding encoded-words is at most 76 characters
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
_TO_ASCII = bytes.maketrans(bytes(range(128, 256)), b"?" * 128)
# RFC 2231 attribute-char: what may appear unescaped in an extended parameter value.
_ATTRIBUTE_CHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")
_ADDRESS_PIECE = re.compile(
    rb'[ \t]+|"(?:[^"\\]|\\.)*"?|<(?:[^>"\\]|\\.|"(?:[^"\\]|\\.)*"?)*>?|[,:;]|[^ \t"<,:;(]+', re.S
)


def make_7bit(raw: bytes) -> bytes:
    """The message with every 8-bit byte transfer-encoded (RFC 6152 §3); ``raw`` itself if 7-bit already.

    Raises CannotDowngrade when that is impossible: a non-ASCII address, or
    8-bit bytes in a header field that has no 7-bit form here.
    """
    if raw.isascii():
        return raw
    return _make_7bit(raw, 0)


def limit_line_length(raw: bytes, limit: int = 998) -> bytes:
    """The message with no line longer than ``limit`` octets where that can be done; else ``raw`` itself.

    Leaves with a long body line are re-encoded (text/* quoted-printable,
    others base64); long header lines are folded at white space, and left as
    they are where there is none.
    """
    if not has_long_line(raw, limit):
        return raw
    out = _limit_line_length(raw, limit, 0)
    return raw if out == raw else out


def _make_7bit(raw: bytes, nesting: int) -> bytes:
    if nesting > _MAX_NESTING:
        raise CannotDowngrade("message/rfc822 parts nested too deeply to downgrade")
    root = tree.parse(raw)
    reencoded = False
    for part in root.walk():
        for index, field in enumerate(part.fields):
            if not field.raw.isascii():
                part.fields[index] = _downgrade_field(field)
        if part.is_multipart:
            # Preamble and epilogue are to be ignored (RFC 2046 §5.1.1): nothing to preserve.
            part.preamble = part.preamble.translate(_TO_ASCII)
            part.epilogue = part.epilogue.translate(_TO_ASCII)
        elif not part.body.isascii():
            encoding = part.transfer_encoding
            if _is_message(part) and encoding in ("7bit", "8bit", "binary"):
                # RFC 2046 §5.2.1: no base64 or quoted-printable for message/rfc822; downgrade inside.
                part.body = _make_7bit(part.body, nesting + 1)
                if encoding != "7bit":
                    part.set_field("Content-Transfer-Encoding", "7bit")
            else:
                part.set_body(part.decoded(), _encoding_for(part))
                reencoded = True
    if reencoded:
        _declare_mime(root)
    out = tree.serialize(root)
    if not out.isascii():
        raise CannotDowngrade("8-bit bytes where no encoding can reach them (a multipart boundary?)")
    return out


def _limit_line_length(raw: bytes, limit: int, nesting: int) -> bytes:
    root = tree.parse(raw)
    reencoded = False
    for part in root.walk():
        for index, field in enumerate(part.fields):
            if has_long_line(field.raw, limit):
                part.fields[index] = Field(field.name, fold_long_lines(field.raw, limit))
        if part.is_multipart:
            part.preamble = break_long_lines(part.preamble, limit)
            part.epilogue = break_long_lines(part.epilogue, limit)
        elif has_long_line(part.body, limit):
            if _is_message(part) and part.transfer_encoding in ("7bit", "8bit", "binary"):
                if nesting < _MAX_NESTING:
                    part.body = _limit_line_length(part.body, limit, nesting + 1)
            else:
                part.set_body(part.decoded(), _encoding_for(part))
                reencoded = True
    if reencoded:
        _declare_mime(root)
    return tree.serialize(root)


def _is_message(part: Part) -> bool:
    # message/global may be base64 or quoted-printable encoded (RFC 6532 §3.5); the others may not.
    content_type = part.content_type
    return content_type.startswith("message/") and content_type != "message/global"


def _encoding_for(part: Part) -> str:
    encoding = part.transfer_encoding
    if encoding in ("base64", "quoted-printable"):
        return encoding  # keep the encoding, only make it well formed
    return "quoted-printable" if part.content_type.startswith("text/") else "base64"


def _declare_mime(root: Part) -> None:
    """Content-Transfer-Encoding means nothing without MIME-Version (RFC 2045 §4)."""
    if root.header("mime-version") is None:
        root.set_field("MIME-Version", "1.0")


def _downgrade_field(field: Field) -> Field:
    raw_name, _, value = field.raw.partition(b":")
    value = _UNFOLD.sub(b"", value).strip(b" \t\r\n")
    name = field.name
    if name in _UNSTRUCTURED or name.startswith("x-"):
        new = _encode_unstructured(value, len(raw_name) + 2)
    elif name == "keywords":
        new = b", ".join(
            keyword if keyword.isascii() else _encode_phrase(keyword) + b" " for keyword in
            (k.strip(b" \t") for k in value.split(b","))
        )
    elif name in _ADDRESS_LISTS:
        new = _encode_addresses(value)
    elif name in _WITH_PARAMETERS:
        new = _encode_parameters(value)
    else:
        raise CannotDowngrade(f"8-bit text in the {name} header field")
    return Field(name, fold(raw_name + b": " + new, _FOLD_WIDTH) + b"\r\n")


def _encode_phrase(text: bytes, first: int = MAX_ENCODED_WORD) -> bytes:
    return b" ".join(encoded_words(text, first))


def _encode_unstructured(value: bytes, lead: int) -> bytes:
    """ASCII words before and after the 8-bit stretch stay readable; the stretch is encoded."""
    tokens = re.split(rb"([ \t]+)", value)  # words at even positions, white space between
    if b"=?" in value:
        # A literal "=?...?=" next to an encoded-word would be decoded too: encode it all.
        first, last = 0, len(tokens) - 1
    else:
        eight_bit = [i for i in range(0, len(tokens), 2) if not tokens[i].isascii()]
        first, last = eight_bit[0], eight_bit[-1]
    prefix, middle = b"".join(tokens[:first]), b"".join(tokens[first : last + 1])
    room = _FOLD_WIDTH - lead - len(prefix)
    return prefix + _encode_phrase(middle, room) + b"".join(tokens[last + 1 :])


def _address_tokens(value: bytes) -> list[tuple[str, bytes]]:
    """(kind, bytes) with kind one of ws, quoted, comment, angle, special, atom."""
    tokens: list[tuple[str, bytes]] = []
    position, length = 0, len(value)
    while position < length:
        if value[position] == 0x28:  # "(": comments nest and may hold quoted pairs
            end, depth = position, 0
            while end < length:
                octet = value[end]
                end += 1
                if octet == 0x5C:
                    end += 1
                elif octet == 0x28:
                    depth += 1
                elif octet == 0x29:
                    depth -= 1
                    if not depth:
                        break
            tokens.append(("comment", value[position:end]))
            position = end
            continue
        match = _ADDRESS_PIECE.match(value, position)
        assert match is not None  # the last alternative takes anything else
        piece = match.group()
        first = piece[:1]
        kind = (
            "ws" if first in (b" ", b"\t") else "quoted" if first == b'"' else "angle" if first == b"<"
            else "special" if first in (b",", b":", b";") else "atom"
        )
        tokens.append((kind, piece))
        position = match.end()
    return tokens


def _encode_addresses(value: bytes) -> bytes:
    out: list[bytes] = []
    mailbox: list[tuple[str, bytes]] = []
    for kind, piece in [*_address_tokens(value), ("special", b"")]:
        if kind == "special":
            out.extend(_downgrade_mailbox(mailbox, is_group_name=piece == b":"))
            out.append(piece)
            mailbox = []
        else:
            mailbox.append((kind, piece))
    return b"".join(out)


def _downgrade_mailbox(tokens: list[tuple[str, bytes]], is_group_name: bool) -> list[bytes]:
    angles = [index for index, (kind, _) in enumerate(tokens) if kind == "angle"]
    cut = angles[0] if angles else len(tokens) if is_group_name else 0
    for kind, piece in tokens[cut:]:
        if kind != "comment" and not piece.isascii():
            raise CannotDowngrade(f"non-ASCII address {piece.decode('utf-8', 'replace')!r}")
    rest = [_downgrade_comment(piece) if kind == "comment" else piece for kind, piece in tokens[cut:]]
    return _downgrade_phrase(tokens[:cut]) + rest


def _downgrade_phrase(tokens: list[tuple[str, bytes]]) -> list[bytes]:
    """A display name (or group name) with 8-bit text becomes encoded-words."""
    if all(piece.isascii() or kind == "comment" for kind, piece in tokens):
        return [_downgrade_comment(piece) if kind == "comment" else piece for kind, piece in tokens]
    words, comments = [], []
    for kind, piece in tokens:
        if kind == "comment":
            comments.append(_downgrade_comment(piece))
        elif kind == "quoted":
            inner = piece[1:-1] if len(piece) > 1 and piece.endswith(b'"') else piece[1:]
            words.append(re.sub(rb"\\(.)", rb"\1", inner, flags=re.S))
        elif kind != "ws":
            words.append(piece)
    leading = [tokens[0][1]] if tokens[0][0] == "ws" else []
    # RFC 2047 §5(3): white space between the encoded-words and the "<" or ":" after them.
    return [*leading, _encode_phrase(b" ".join(words)), *(b" " + comment for comment in comments), b" "]


def _downgrade_comment(comment: bytes) -> bytes:
    if comment.isascii():
        return comment
    inner = comment[1:-1] if len(comment) > 1 and comment.endswith(b")") else comment[1:]
    return b"(" + _encode_phrase(inner) + b")"


def _encode_parameters(value: bytes) -> bytes:
    """Content-Type or -Disposition: 8-bit parameter values get RFC 2231 encoding."""
    segments: list[list[tuple[str, bytes]]] = [[]]
    for kind, piece in _address_tokens(value):
        if kind == "special" and piece == b";":
            segments.append([])
        else:
            segments[-1].append((kind, piece))
    out = []
    for index, segment in enumerate(segments):
        text = b"".join(piece for _, piece in segment).strip(b" \t")
        if text.isascii():
            out.append(text)
            continue
        bare = b"".join(piece for kind, piece in segment if kind != "comment")
        name, equals, parameter = bare.partition(b"=")
        name, parameter = name.strip(b" \t"), parameter.strip(b" \t")
        if index == 0 or not equals or not name or not name.isascii() or b"*" in name:
            raise CannotDowngrade("8-bit text in a MIME parameter that has no 7-bit form")
        if parameter.startswith(b'"'):
            inner = parameter[1:-1] if len(parameter) > 1 and parameter.endswith(b'"') else parameter[1:]
            parameter = re.sub(rb"\\(.)", rb"\1", inner, flags=re.S)
        out.extend(_rfc2231(name, parameter))
    return b"; ".join(out)


def _rfc2231(name: bytes, value: bytes) -> list[bytes]:
    """``name*=utf-8''...``, split into ``name*0*=``, ``name*1*=``... when long (RFC 2231 §3, §4)."""
    try:
        value.decode("utf-8")
        charset = b"utf-8"
    except UnicodeDecodeError:
        charset = b"unknown-8bit"
    chunks, current = [], b""
    for octet in value:
        escaped = bytes([octet]) if octet in _ATTRIBUTE_CHAR else b"%%%02X" % octet
        if current and len(current) + len(escaped) > 60:
            chunks.append(current)
            current = b""
        current += escaped
    chunks.append(current)
    if len(chunks) == 1:
        return [name + b"*=" + charset + b"''" + chunks[0]]
    chunks[0] = charset + b"''" + chunks[0]
    return [name + b"*%d*=" % number + chunk for number, chunk in enumerate(chunks)]

