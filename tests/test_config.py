"""Configuration parsing: defaults, types, and errors that name the culprit."""

from __future__ import annotations

import os
import shutil
import tempfile
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
        checkout = Path(os.path.abspath(Path(__file__).parent.parent))
        config = load_config(str(checkout / "etc" / "smtpeter.toml"))
        self.assertEqual(config.server.hostname, "localhost")
        # make run keeps its data where the README says, from any working directory.
        self.assertEqual(config.data_path, checkout / "var" / "smtpeter")
        with self.assertRaises(ConfigError):
            load_config("/nonexistent.toml")

    def test_relative_paths_follow_the_config_file(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="smtpeter-config-"))
        self.addCleanup(shutil.rmtree, directory)
        (directory / "etc").mkdir()
        path = Path(os.path.relpath(directory / "etc" / "smtpeter.toml"))  # as on a command line
        path.write_text('[server]\ndata_dir = "../var"\n[storage]\nurl = "sqlite:///db/s.sqlite3"\n'
                        '[tls]\ncertificate = "tls/cert.pem"\nkey = "/abs/key.pem"\n'
                        '[http]\naccess_log = "access.log"\n')
        config = load_config(str(path))
        etc = Path(os.path.abspath(path.parent))
        self.assertEqual(config.data_path, etc.parent / "var")
        self.assertEqual(config.storage_url, f"sqlite:///{etc / 'db' / 's.sqlite3'}")
        self.assertEqual(config.tls.certificate, str(etc / "tls" / "cert.pem"))
        self.assertEqual(config.tls.key, "/abs/key.pem")
        self.assertEqual(config.http.access_log, str(etc / "access.log"))
        # Without data_dir, the default data directory sits next to the file too.
        path.write_text('[storage]\nurl = "sqlite:///:memory:"\n')
        config = load_config(str(path))
        self.assertEqual((config.data_path, config.storage.url), (etc / "var" / "smtpeter", "sqlite:///:memory:"))

    def test_without_a_file_paths_are_relative_to_the_working_directory(self) -> None:
        config = parse_config({"server": {"data_dir": "data"}})
        self.assertEqual(config.server.data_dir, "data")

    def test_errors_in_a_file_name_it(self) -> None:
        path = Path(tempfile.mkdtemp(prefix="smtpeter-config-")) / "smtpeter.toml"
        self.addCleanup(shutil.rmtree, path.parent)
        path.write_text("[smtp]\nfoo = 1\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(str(path))
        self.assertEqual(str(caught.exception), f"{path}: unknown key 'foo' in [smtp]")
