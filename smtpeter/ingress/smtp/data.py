"""The DATA phase (RFC 5321 §4.1.1.4, §4.5.2), without I/O.

Only ``<CRLF>.<CRLF>`` ends the data; the start of the data counts as a line
start, so an empty message is just ``.<CRLF>``. Anything that could be read
as a line ending by a more lenient server (a bare CR, a bare LF) or that no
mail may carry (NUL) makes the whole message invalid, in the spirit of
Postfix's ``smtpd_forbid_bare_newline``: we never accept and relay bytes that
a downstream server might split into two messages.

The reader keeps at most ``max_size`` bytes; past that it only watches for
the end marker, so an over-long message costs no memory, and it never leaves
the DATA phase early whatever the input.
"""

from __future__ import annotations

from dataclasses import dataclass

_END = b"\r\n.\r\n"
# The data is scanned as if preceded by CRLF, so a first line "." ends it too.
_START = b"\r\n"


@dataclass(frozen=True)
class DataProblem:
    code: int
    status: str
    text: str


TOO_BIG = DataProblem(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_NEWLINE = DataProblem(
    550, "5.5.2", "Message refused: bare <CR> or <LF> in message data (RFC 5321 §2.3.8)"
)
NUL_BYTE = DataProblem(550, "5.6.0", "Message refused: NUL byte in message data")


def long_line(limit: int) -> DataProblem:
    return DataProblem(552, "5.3.4", f"Message refused: line longer than {limit} octets")


def _has_long_line(content: bytes, limit: int) -> bool:
    """Whether a CRLF-terminated line of ``content`` is longer than ``limit``.

    A line longer than ``limit`` contains a whole aligned window of
    ``limit // 2`` bytes without LF, so probing the windows with ``find``
    avoids splitting a large message into lines.
    """
    window = max(1, limit // 2)
    for start in range(0, len(content) - window + 1, window):
        if content.find(b"\n", start, start + window) < 0:
            line_start = content.rfind(b"\n", 0, start) + 1
            line_end = content.find(b"\n", start)
            if (len(content) if line_end < 0 else line_end) - line_start - 1 > limit:
                return True
    return False


class DataReader:
    """Accumulates DATA bytes until the end marker, then validates and unstuffs."""

    def __init__(self, max_size: int, max_line_length: int) -> None:
        self._max_size = max_size
        self._max_line_length = max_line_length
        self._buffer = bytearray(_START)
        self._scanned = 0  # where the next search for the end marker starts
        self._discarding = False

    def feed(self, data: bytes) -> tuple[bytes | DataProblem, bytes] | None:
        """Consume ``data``.

        Returns None while the end marker has not arrived; afterwards
        ``(message or problem, bytes after the marker)``.
        """
        self._buffer += data
        end = self._buffer.find(_END, self._scanned)
        if end < 0:
            # Keep the last bytes: the marker may straddle this chunk and the next.
            self._scanned = max(0, len(self._buffer) - len(_END) + 1)
            if len(self._buffer) - len(_START) > self._max_size:
                self._discard()
            return None
        rest = bytes(self._buffer[end + len(_END):])
        if self._discarding or end + 2 - len(_START) > self._max_size:
            return TOO_BIG, rest
        # Keep the CRLF that precedes the dot: it ends the last line.
        content = bytes(self._buffer[: end + 2])
        self._buffer = bytearray()
        return self._check(content), rest

    def _discard(self) -> None:
        # Too big already: keep only what may hold the start of the end marker.
        del self._buffer[: -(len(_END) - 1)]
        self._discarding = True
        self._scanned = 0

    def _check(self, content: bytes) -> bytes | DataProblem:
        """Validate ``CRLF + message`` and return the unstuffed message."""
        if b"\x00" in content:
            return NUL_BYTE
        crlf = content.count(b"\r\n")
        if content.count(b"\r") != crlf or content.count(b"\n") != crlf:
            return BARE_NEWLINE
        if _has_long_line(content, self._max_line_length):
            return long_line(self._max_line_length)
        # A leading dot is removed from every line (RFC 5321 §4.5.2).
        return content.replace(b"\r\n.", b"\r\n")[len(_START):]
