"""The one envelope model and the one options parser every ingress uses."""

from __future__ import annotations

from twisted.trial import unittest

from smtpeter.envelope import (
    Envelope,
    MessageOptions,
    OptionError,
    Recipient,
    parse_boolean,
    parse_envid,
    parse_notify,
    parse_ret,
    parse_tag,
)


class ParserTests(unittest.TestCase):
    def test_notify(self) -> None:
        self.assertEqual(parse_notify("failure, delay"), "FAILURE,DELAY")
        self.assertEqual(parse_notify("never"), "NEVER")
        for bad in ("", "NEVER,FAILURE", "SOMETIMES", "FAILURE,FAILURE"):
            self.assertRaises(ValueError, parse_notify, bad)

    def test_ret_envid_tags_booleans(self) -> None:
        self.assertEqual(parse_ret("hdrs"), "HDRS")
        self.assertRaises(ValueError, parse_ret, "ALL")
        self.assertEqual(parse_envid("id-1"), "id-1")
        self.assertRaises(ValueError, parse_envid, "x" * 101)
        self.assertRaises(ValueError, parse_envid, "a\nb")
        self.assertEqual(parse_tag(" news "), "news")
        for bad in ("a b", "a;b", "", "x" * 101):
            self.assertRaises(ValueError, parse_tag, bad)
        for yes in (True, 1, "true", "YES", " on ", "1"):
            self.assertIs(parse_boolean(yes), True)
        for no in (False, 0, "false", "No", "off", "0"):
            self.assertIs(parse_boolean(no), False)
        for bad in (2, "maybe", None, 1.0, []):
            self.assertRaises(ValueError, parse_boolean, bad)

    def test_recipient_wants(self) -> None:
        self.assertTrue(Recipient("a@x.test").wants("FAILURE"))  # the default
        self.assertFalse(Recipient("a@x.test").wants("SUCCESS"))
        self.assertFalse(Recipient("a@x.test", notify="NEVER").wants("FAILURE"))
        self.assertTrue(Recipient("a@x.test", notify="SUCCESS,DELAY").wants("DELAY"))

    def test_envelope_copies(self) -> None:
        envelope = Envelope("s@x.test", (Recipient("a@x.test"),), ret="FULL")
        other = envelope.with_recipients([Recipient("b@x.test")])
        self.assertEqual((other.sender, other.recipients, other.ret),
                         ("s@x.test", (Recipient("b@x.test"),), "FULL"))
        self.assertEqual(envelope.recipients, (Recipient("a@x.test"),))


class MessageOptionsTests(unittest.TestCase):
    def test_parse_from_headers_json_and_forms(self) -> None:
        options = MessageOptions.parse({"trackclicks": "yes", "inlinecss": False, "images": "HOSTED"})
        self.assertEqual(options, MessageOptions(trackclicks=True, inlinecss=False, images="hosted"))
        self.assertEqual(options.as_dict(), {"inlinecss": False, "trackclicks": True, "images": "hosted"})

    def test_legacy_names_and_a_current_name_wins(self) -> None:
        self.assertEqual(MessageOptions.parse({"clicktracking": True}, legacy=True),
                         MessageOptions(trackclicks=True))
        self.assertEqual(MessageOptions.parse({"clicktracking": True, "trackclicks": False}, legacy=True),
                         MessageOptions(trackclicks=False))
        self.assertEqual(MessageOptions.parse({"trackclicks": False, "clicktracking": True}, legacy=True),
                         MessageOptions(trackclicks=False))
        with self.assertRaises(OptionError) as caught:
            MessageOptions.parse({"clicktracking": True})  # only where legacy names are read
        self.assertEqual(caught.exception.name, "clicktracking")

    def test_errors_name_the_option(self) -> None:
        with self.assertRaises(OptionError) as caught:
            MessageOptions.parse({"trackopens": "sometimes"})
        error = caught.exception
        self.assertEqual((error.name, error.message), ("trackopens", "must be true or false"))
        with self.assertRaises(OptionError) as caught:
            MessageOptions.parse({"images": "inline"})
        self.assertEqual(caught.exception.name, "images")

    def test_layers_merge_in_order(self) -> None:
        login = MessageOptions(trackclicks=True, trackopens=True)
        request = MessageOptions(trackopens=False)
        headers = MessageOptions(trackclicks=False, preventscam=True)
        merged = login.merged(request, headers)
        self.assertEqual(merged, MessageOptions(trackclicks=False, trackopens=False, preventscam=True))
