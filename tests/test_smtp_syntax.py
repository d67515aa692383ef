"""SMTP command syntax: paths, parameters, mailboxes, xtext."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from smtpeter.address import xtext_encode
from smtpeter.ingress.smtp.syntax import (
    SyntaxProblem,
    check_mailbox,
    parse_params,
    parse_path,
    split_command,
    xtext_decode,
)


class CommandTests(unittest.TestCase):
    def test_split_command(self) -> None:
        self.assertEqual(split_command(b"mail FROM:<a@b>"), ("MAIL", b"FROM:<a@b>"))
        self.assertEqual(split_command(b"QUIT"), ("QUIT", b""))
        self.assertEqual(split_command(b"\xff\xfe x")[0], "")

    def test_path_with_parameters(self) -> None:
        path = parse_path(b"FROM:<a@example.com> SIZE=100 body=8BITMIME", "FROM", allow_null=True)
        self.assertEqual(path.address, "a@example.com")
        self.assertEqual(path.params, {"SIZE": "100", "BODY": "8BITMIME"})

    def test_space_after_colon_and_source_route(self) -> None:
        self.assertEqual(parse_path(b"TO: <@relay.example:u@example.com>", "TO", False).address,
                         "u@example.com")

    def test_null_path_only_for_senders(self) -> None:
        self.assertEqual(parse_path(b"FROM:<>", "FROM", allow_null=True).address, "")
        with self.assertRaises(SyntaxProblem):
            parse_path(b"TO:<>", "TO", allow_null=False)

    def test_quoted_local_part_may_hold_brackets(self) -> None:
        path = parse_path(b'TO:<"a>b c"@example.com> NOTIFY=NEVER', "TO", False)
        self.assertEqual(path.address, '"a>b c"@example.com')
        self.assertEqual(path.params, {"NOTIFY": "NEVER"})

    def test_malformed_paths(self) -> None:
        for args in (b"FROM:a@example.com", b"FROM:<a@example.com", b"TO:<a@b>x", b"<a@b>"):
            with self.assertRaises(SyntaxProblem):
                parse_path(args, "FROM" if args.startswith(b"FROM") else "TO", True)

    def test_parameters(self) -> None:
        self.assertEqual(parse_params(" smtputf8 RET=HDRS"), {"SMTPUTF8": None, "RET": "HDRS"})
        for bad in ("SIZE=1 SIZE=2", "=x", "A=b=c", "A="):
            with self.assertRaises(SyntaxProblem):
                parse_params(bad)

    def test_mailbox_ascii_and_utf8(self) -> None:
        self.assertEqual(check_mailbox("Joe.Bloggs@Example.COM", False), "Joe.Bloggs@example.com")
        self.assertEqual(check_mailbox("user@[127.0.0.1]", False), "user@[127.0.0.1]")
        with self.assertRaises(SyntaxProblem) as caught:
            check_mailbox("josé@exämple.de", False)
        self.assertEqual((caught.exception.code, caught.exception.status), (553, "5.6.7"))
        self.assertEqual(check_mailbox("josé@exämple.de", True), "josé@exämple.de")
        for bad in ("a..b@x.com", "a@", "@x.com", "a@-x.com", "a b@x.com", "a@x..com", "x" * 65 + "@x.com"):
            with self.assertRaises(SyntaxProblem):
                check_mailbox(bad, True)


class XtextTests(unittest.TestCase):
    def test_escapes_plus_and_equals(self) -> None:
        # Twisted's xtext_encode leaves these alone (libraries.md §9); ours must not.
        self.assertEqual(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d")
        self.assertEqual(xtext_decode("a+2Bb+3Dc"), "a+b=c")

    def test_invalid_xtext(self) -> None:
        for bad in ("+2", "+zz", "a=b", "+2b"):
            with self.assertRaises(SyntaxProblem):
                xtext_decode(bad)

    @given(st.text())
    def test_round_trip(self, value: str) -> None:
        encoded = xtext_encode(value)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E and c != "=" for c in encoded))
        self.assertEqual(xtext_decode(encoded), value)
