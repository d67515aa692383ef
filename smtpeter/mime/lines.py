"""Line lengths (RFC 5322 §2.1.1: at most 998 octets, 78 preferred) and header folding (§3.2.2)."""

from __future__ import annotations

import re

_WORD = re.compile(rb"[ \t]*[^ \t]+")


def foldable(field: bytes, limit: int = 998) -> bool:
    """Whether a header field can go out with no line over ``limit`` octets, folded at white space
    where it must be (what ``limit_line_length`` does to it)."""
    return not has_long_line(field, limit) or not has_long_line(fold_long_lines(field, limit), limit)


def has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line of ``data`` has more than ``limit`` octets before its CRLF.

    Such a line holds a whole aligned window of ``limit // 2 + 1`` octets
    without LF, so probing those windows with ``find`` is enough.
    """
    if len(data) <= limit:
        return False
    window = limit // 2 + 1
    for start in range(0, len(data) - window + 1, window):
        if data.find(b"\n", start, start + window) < 0:
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", start)
            if line_end < 0:
                line_end = len(data)
            elif data[line_end - 1] == 0x0D:
                line_end -= 1
            if line_end - line_start > limit:
                return True
    return False


def _lines(data: bytes) -> list[tuple[bytes, bytes]]:
    """(content, line break) for each line."""
    lines = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+", data):
        ending = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
        lines.append((line[: len(line) - len(ending)], ending))
    return lines


def fold_long_lines(raw: bytes, limit: int) -> bytes:
    """Fold each line longer than ``limit``; one that cannot be folded to fit is left as it is."""
    out = []
    for content, ending in _lines(raw):
        if len(content) > limit:
            folded = fold(content, 78)
            if max(map(len, folded.split(b"\r\n"))) <= limit:
                content = folded
        out.append(content + ending)
    return b"".join(out)


def break_long_lines(data: bytes, limit: int) -> bytes:
    if not has_long_line(data, limit):
        return data
    out = []
    for content, ending in _lines(data):
        out.append(b"\r\n".join(content[i : i + limit] for i in range(0, len(content), limit)) + ending)
    return b"".join(out)


def fold(line: bytes, width: int) -> bytes:
    """RFC 5322 §3.2.2 folding: CRLF inserted before white space, lines at most ``width`` where possible.

    No line is left holding white space only, and a word longer than
    ``width`` stays whole on an over-long line.
    """
    content_end = len(line.rstrip(b" \t"))
    pieces, start = [], 0
    while len(line) - start > width:
        word = _WORD.match(line, start)
        if word is None or word.end() >= content_end:
            break
        earliest, latest = word.end(), min(start + width, content_end - 1)
        cut = max(line.rfind(b" ", earliest, latest + 1), line.rfind(b"\t", earliest, latest + 1))
        if cut < 0:
            cut = earliest
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return b"\r\n".join(pieces)


def crlf_lines(data: bytes) -> bytes:
    """``data`` with every line ending CRLF, the last one too (RFC 5321 §2.3.8: no bare CR or LF)."""
    if b"\r" in data:
        # Every CRLF, then every bare CR and LF left, becomes LF; then all of them CRLF.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data
