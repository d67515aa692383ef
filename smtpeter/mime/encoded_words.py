"""RFC 2047 encoded-words: header text that is not plain ASCII, in a form every reader takes.

One encoder for every writer of header fields: the API's composer and the
7-bit downgrade of the outbound pipeline.
"""

from __future__ import annotations

import base64

MAX_ENCODED_WORD = 75  # characters (RFC 2047 §2)
# RFC 2047 §5(3): the characters a "Q" encoded-word may carry as they are, in any position.
_Q_LITERAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


def encoded_words(text: bytes, first: int = MAX_ENCODED_WORD) -> list[bytes]:
    """RFC 2047 encoded-words for ``text``, never splitting a character.

    Each is at most MAX_ENCODED_WORD characters; the first at most ``first`` (if that leaves
    room for some text), so that it can share the line before it. Text that
    is not UTF-8 goes as ``unknown-8bit`` (RFC 1428). Q where it is not longer
    than B, as Q stays readable; the words fit in phrases too (RFC 2047 §5(3)).
    A reader drops the white space between encoded-words (§6.2), so together
    they decode to exactly ``text``.
    """
    try:
        units = [character.encode() for character in text.decode("utf-8")]
        charset = b"utf-8"
    except UnicodeDecodeError:
        units = [bytes([octet]) for octet in text]
        charset = b"unknown-8bit"
    quoted = [b"".join(_q(octet) for octet in unit) for unit in units]
    use_q = sum(map(len, quoted)) <= 4 * -(-len(text) // 3)
    prefix = b"=?" + charset + (b"?Q?" if use_q else b"?B?")
    words, current, size = [], [], 0
    budget = _budget(first if first >= len(prefix) + 14 else MAX_ENCODED_WORD, len(prefix), use_q)
    for unit, encoded in zip(units, quoted, strict=True):
        cost = len(encoded) if use_q else len(unit)
        if current and size + cost > budget:
            words.append(current)
            current, size = [], 0
            budget = _budget(MAX_ENCODED_WORD, len(prefix), use_q)
        current.append(encoded if use_q else unit)
        size += cost
    if current:
        words.append(current)
    if use_q:
        return [prefix + b"".join(word) + b"?=" for word in words]
    return [prefix + base64.b64encode(b"".join(word)) + b"?=" for word in words]


def _budget(length: int, prefix: int, use_q: bool) -> int:
    """How much text an encoded-word of ``length`` characters carries (encoded for Q, raw for B)."""
    room = length - prefix - 2
    return room if use_q else room // 4 * 3


def _q(octet: int) -> bytes:
    if octet in _Q_LITERAL:
        return bytes([octet])
    return b"_" if octet == 0x20 else b"=%02X" % octet
