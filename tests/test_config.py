"""Configuration parsing: defaults, types, and errors that name the culprit."""

from __future__ import annotations

import base64
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


class DomainsConfigTests(unittest.TestCase):
    """[domains]: sender domains' DNS records, DKIM keys and their rotation."""

    def test_defaults(self) -> None:
        domains = parse_config({"server": {"hostname": "mail.example.net"}}).domains
        self.assertEqual(domains.sending_addresses, [])
        self.assertEqual((domains.hosted_zone, domains.dns_listen), ("", []))
        self.assertEqual(domains.mx_host, "mail.example.net")
        self.assertEqual(domains.dmarc_address, "dmarc@mail.example.net")
        self.assertEqual(domains.encryption_key, "")
        self.assertEqual(domains.dkim_algorithms, ["rsa", "ed25519"])
        self.assertEqual((domains.rotation_days, domains.retired_days, domains.check_interval),
                         (30.0, 7.0, 3600.0))

    def test_values(self) -> None:
        key = base64.b64encode(bytes(range(32))).decode()
        domains = parse_config({"domains": {
            "sending_addresses": ["192.0.2.1", "2001:DB8:0:0::25"],
            "hosted_zone": "DNS.Example.NET.",
            "dns_listen": "tcp:5353",
            "mx_host": "mx.example.net",
            "dmarc_address": "reports@example.net",
            "encryption_key": key,
            "dkim_algorithms": ["ed25519"],
            "rotation_days": 90,
            "retired_days": 2.5,
            "check_interval": 600,
        }}).domains
        # Addresses and names in the form records are compared in.
        self.assertEqual(domains.sending_addresses, ["192.0.2.1", "2001:db8::25"])
        self.assertEqual(domains.hosted_zone, "dns.example.net")
        self.assertEqual(domains.dns_listen, ["tcp:5353"])
        self.assertEqual((domains.mx_host, domains.dmarc_address), ("mx.example.net", "reports@example.net"))
        self.assertEqual(domains.encryption_key, key)
        self.assertEqual(domains.dkim_algorithms, ["ed25519"])
        self.assertEqual((domains.rotation_days, domains.retired_days, domains.check_interval),
                         (90.0, 2.5, 600.0))
        # The DMARC mailbox follows a configured mx_host.
        self.assertEqual(parse_config({"domains": {"mx_host": "mx.example.org"}}).domains.dmarc_address,
                         "dmarc@mx.example.org")

    def test_errors(self) -> None:
        cases = [
            ({"domains": {"sending_address": []}}, "unknown key 'sending_address' in [domains]"),
            ({"domains": {"sending_addresses": ["192.0.2.0/24"]}}, "'192.0.2.0/24' is not an IPv4 or IPv6"),
            ({"domains": {"sending_addresses": ["mail.example.net"]}}, "[domains] sending_addresses"),
            ({"domains": {"sending_addresses": [1]}}, "[domains] sending_addresses must be a list of str"),
            ({"domains": {"hosted_zone": "dns example"}}, "hosted_zone: 'dns example' is not a DNS"),
            ({"domains": {"dns_listen": ["tcp:53"]}}, "dns_listen needs hosted_zone"),
            ({"domains": {"mx_host": "-mx.example.net"}}, "[domains] mx_host"),
            ({"server": {"hostname": "my_host"}}, "[domains] mx_host (server.hostname): 'my_host'"),
            ({"domains": {"dmarc_address": "dmarc"}}, "[domains] dmarc_address: 'dmarc' is not an e-mail"),
            ({"domains": {"dmarc_address": "dmarc@ex ample.net"}}, "[domains] dmarc_address"),
            ({"domains": {"encryption_key": "c2hvcnQ="}}, "encryption_key must be the base64 of 32 bytes"),
            ({"domains": {"encryption_key": "!" * 44}}, "encryption_key must be the base64 of 32 bytes"),
            ({"domains": {"dkim_algorithms": []}}, "dkim_algorithms must name at least one"),
            ({"domains": {"dkim_algorithms": ["dsa"]}}, "dkim_algorithms: 'dsa' is not one of rsa, ed25519"),
            ({"domains": {"dkim_algorithms": ["rsa", "rsa"]}}, "names an algorithm twice"),
            ({"domains": {"rotation_days": 0}}, "[domains] rotation_days must be positive"),
            ({"domains": {"retired_days": -1}}, "[domains] retired_days must be positive"),
            ({"domains": {"check_interval": "1h"}}, "[domains] check_interval must be a number"),
        ]
        for raw, message in cases:
            with self.assertRaises(ConfigError, msg=raw) as caught:
                parse_config(raw)
            self.assertIn(message, str(caught.exception))
