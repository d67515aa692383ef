"""The DATA reader: framing, dot-unstuffing and the smuggling defences, without sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from smtpeter.ingress.smtp.data import (
    BARE_NEWLINE,
    NUL_BYTE,
    TOO_BIG,
    DataProblem,
    DataReader,
    _has_long_line,
)

SMUGGLED = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n"
# Every end-of-data look-alike a lenient server might accept (SMTP smuggling, 2023).
FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
             b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"]


def stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def feed_all(reader: DataReader, data: bytes, cuts: list[int]) -> tuple[object, bytes]:
    """Feed ``data`` split at ``cuts``; the reader must finish exactly once, on the last piece."""
    pieces, start = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    for index, piece in enumerate(pieces):
        result = reader.feed(piece)
        if result is not None:
            # What follows the end belongs to the command phase again.
            return result[0], result[1] + b"".join(pieces[index + 1:])
    raise AssertionError("the end of data was never found")


lines = st.lists(st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")),
                 max_size=30)


class DataReaderTests(unittest.TestCase):
    @given(lines, st.lists(st.integers(min_value=0, max_value=3000), max_size=10), st.binary(max_size=20))
    def test_any_chunking_gives_back_the_message(self, body: list[bytes], cuts: list[int],
                                                 after: bytes) -> None:
        message = b"".join(line + b"\r\n" for line in body)
        wire = stuff(body) + b".\r\n" + after
        result, rest = feed_all(DataReader(10**6, 10**6), wire, cuts)
        self.assertEqual(result, message)
        self.assertEqual(rest, after)

    def test_leading_dots(self) -> None:
        self.assertEqual(DataReader(100, 100).feed(b"..\r\n...x\r\n.\r\n"), (b".\r\n..x\r\n", b""))
        # A single-dot prefix that the client forgot to double is still removed (RFC 5321 §4.5.2).
        self.assertEqual(DataReader(100, 100).feed(b".x\r\n.\r\n"), (b"x\r\n", b""))
        self.assertEqual(DataReader(100, 100).feed(b".\r\n"), (b"", b""))

    def test_fake_ends_never_end_the_data(self) -> None:
        for fake in FAKE_ENDS:
            wire = b"Subject: hi\r\n\r\nbody" + fake + SMUGGLED + b"tail\r\n.\r\nQUIT\r\n"
            for cut in range(0, len(wire), 7):
                result = feed_all(DataReader(10**6, 10**6), wire, [cut])
                self.assertIsInstance(result[0], DataProblem, fake)
                self.assertIn(result[0], (BARE_NEWLINE, NUL_BYTE), fake)
                # The first real <CRLF>.<CRLF> ended it: it was the smuggled one.
                self.assertEqual(result[1], b"tail\r\n.\r\nQUIT\r\n", fake)

    def test_too_big_is_discarded_but_framed(self) -> None:
        reader = DataReader(1000, 10**6)
        for _ in range(100):
            self.assertIsNone(reader.feed(b"x" * 998 + b"\r\n"))
        self.assertLess(len(reader._buffer), 10)
        self.assertEqual(reader.feed(b".\r\nNOOP\r\n"), (TOO_BIG, b"NOOP\r\n"))

    def test_marker_split_across_chunks_while_discarding(self) -> None:
        reader = DataReader(10, 10**6)
        for piece in (b"y" * 50, b"\r", b"\n", b".", b"\r", b"\nRSET\r\n"):
            result = reader.feed(piece)
        self.assertEqual(result, (TOO_BIG, b"RSET\r\n"))

    @given(st.lists(st.integers(min_value=0, max_value=300), max_size=20),
           st.integers(min_value=1, max_value=120))
    def test_long_line_probe_matches_splitting(self, lengths: list[int], limit: int) -> None:
        content = b"\r\n" + b"".join(b"x" * n + b"\r\n" for n in lengths)
        self.assertEqual(_has_long_line(content, limit), any(n > limit for n in lengths))

    def test_long_line_is_refused_after_the_end(self) -> None:
        result, rest = DataReader(10**6, 100).feed(b"a" * 101 + b"\r\nMAIL FROM:<e@x>\r\n.\r\nQUIT\r\n")
        self.assertEqual((result.code, result.status), (552, "5.3.4"))
        self.assertEqual(rest, b"QUIT\r\n")
        result, _ = DataReader(10**6, 100).feed(b"a" * 100 + b"\r\n.\r\n")
        self.assertEqual(result, b"a" * 100 + b"\r\n")
