"""Configuration parsing: defaults, types, and errors that name the culprit."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from smtpeter.config import ConfigError, load_config, parse_config


class ConfigTests(unittest.TestCase):
    def test_defaults(self) -> None:
        config = parse_config({})
        self.assertEqual(config.smtp.listen, ["tcp:587"])
        self.assertEqual(config.http.listen, ["tcp:8080"])
        self.assertTrue(config.storage_url.startswith("sqlite:////"))
        self.assertTrue(config.storage_url.endswith("/var/smtpeter/smtpeter.sqlite3"))
        self.assertEqual(config.smtp.trusted_networks, [])

    def test_strings_accepted_for_lists(self) -> None:
        config = parse_config({"smtp": {"listen": "tcp:2525", "trusted_networks": "10.0.0.0/8",
                                        "trusted_account": "apps"}})
        self.assertEqual(config.smtp.listen, ["tcp:2525"])
        self.assertEqual(str(config.smtp.networks()[0]), "10.0.0.0/8")

    def test_errors(self) -> None:
        cases = [
            ({"smtpd": {}}, "unknown section [smtpd]"),
            ({"smtp": {"listn": []}}, "unknown key 'listn' in [smtp]"),
            ({"smtp": {"max_recipients": "10"}}, "[smtp] max_recipients must be an integer"),
            ({"smtp": {"max_recipients": 0}}, "[smtp] max_recipients must be positive"),
            ({"smtp": {"trusted_networks": ["10.0.0.0/33"], "trusted_account": "a"}}, "trusted_networks"),
            ({"smtp": {"trusted_networks": ["10.0.0.0/8"]}}, "needs trusted_account"),
            ({"storage": {"url": "mysql://x"}}, "[storage] url must start with"),
            ({"tls": {"certificate": "/x.pem"}}, "certificate and key go together"),
            ({"dns": {"nameservers": ["dns.example"]}}, "is not IP[:port]"),
            ({"http": {"autoconfig_incoming": ["imap.example.com"]}}, "[http] autoconfig_incoming"),
            ({"http": {"autoconfig_incoming": ["ftp://files.example.com"]}}, "is not imaps://"),
            ({"delivery": {"max_deliver_time": 0}}, "[delivery] max_deliver_time must be positive"),
        ]
        for raw, message in cases:
            with self.assertRaises(ConfigError) as caught:
                parse_config(raw)
            self.assertIn(message, str(caught.exception))

    def test_example_config_loads(self) -> None:
        config = load_config(str(Path(__file__).parent.parent / "etc" / "smtpeter.toml"))
        self.assertEqual(config.server.hostname, "localhost")
        with self.assertRaises(ConfigError):
            load_config("/nonexistent.toml")
