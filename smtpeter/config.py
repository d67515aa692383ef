"""Configuration: a TOML file read into typed, validated dataclasses.

Unknown sections or keys are errors, so a typo never silently falls back to a
default (an operator who writes ``trusted_network`` must hear about it).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from smtpeter.domains.model import ALGORITHMS


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class ServerConfig:
    hostname: str = ""
    data_dir: str = "var/smtpeter"


@dataclass
class StorageConfig:
    url: str = ""
    # PostgreSQL connections in our pool; SQLite always has one writer.
    pool_size: int = 4


@dataclass
class SMTPConfig:
    listen: list[str] = field(default_factory=lambda: ["tcp:587"])
    listen_tls: list[str] = field(default_factory=list)
    trusted_networks: list[str] = field(default_factory=list)
    trusted_account: str = ""
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    # Longest line accepted inside DATA (RFC 5321 says 1000, real mail breaks it).
    max_line_length: int = 16384
    max_connections: int = 1000
    max_connections_per_client: int = 50
    max_errors: int = 20
    timeout: float = 300.0
    data_timeout: float = 600.0
    # Failed AUTH attempts (over every listener) after which further ones are
    # refused unchecked with 454 4.7.0, until they age out of the window.
    auth_failures_per_client: int = 10
    auth_failures_per_login: int = 30
    auth_failure_window: float = 900.0
    # Whether a display name in From/Sender may show an address at a domain the
    # account does not own ("ceo@bank.example" <news@acme.example>). Also for the API.
    allow_foreign_display_name_addresses: bool = False

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]


@dataclass
class MXConfig:
    # Receiving listeners for what comes back (port 25 in production); STARTTLS offered, no AUTH.
    listen: list[str] = field(default_factory=list)
    # A bounce returns the whole message it is about; larger ones are refused at MAIL (SIZE) or DATA.
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_client: int = 20
    max_errors: int = 10
    timeout: float = 300.0
    data_timeout: float = 600.0


@dataclass
class HTTPConfig:
    listen: list[str] = field(default_factory=lambda: ["tcp:8080"])
    # HTTPS listeners (a tcp: endpoint is wrapped in TLS with our certificate).
    listen_tls: list[str] = field(default_factory=list)
    public_url: str = ""
    max_body_size: int = 64 * 1024 * 1024
    max_recipients: int = 1000
    # Bearer token that opens /metrics to other hosts than localhost.
    metrics_token: str = ""
    # Logs an operator into the dashboard's operator view (/dashboard/operator); empty: no operator log-in.
    admin_token: str = ""
    # Access log (combined format); default: http-access.log in the data directory.
    access_log: str = ""
    # Incoming mail servers Thunderbird's autoconfig should name with our SMTP
    # service, as URLs: imaps://host:993, imap://host:143 (STARTTLS), pop3s://, pop3://.
    autoconfig_incoming: list[str] = field(default_factory=list)
    # Processes that answer clicks and opens on the plain listeners (smtpeter/ingress/http/
    # redirect_workers.py); unset: one per core beside the reactor's; 0: the reactor answers them.
    redirect_workers: int | None = None


@dataclass
class TrackingConfig:
    """Click and open tracking, hosted images and the web version."""

    # Secrets that sign tracking links: the first signs, all verify (rotate by adding one in
    # front). Empty: one is made on first start and kept in the data directory.
    keys: list[str] = field(default_factory=list)
    # Networks the image proxy may fetch from although they are private or loopback.
    allow_networks: list[str] = field(default_factory=list)
    # Regular expressions for user agents that are machines (scanners, image proxies),
    # on top of the shipped list.
    bot_user_agents: list[str] = field(default_factory=list)
    # A click or open this soon after delivery is a machine's, not a reader's.
    bot_seconds: float = 5.0
    # The image proxy: largest image, longest fetch, and what its cache may hold.
    image_max_bytes: int = 10 * 1024 * 1024
    image_timeout: float = 10.0
    image_cache_bytes: int = 256 * 1024 * 1024

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allow_networks]


@dataclass
class TLSConfig:
    certificate: str = ""
    key: str = ""


@dataclass
class DNSConfig:
    nameservers: list[str] = field(default_factory=list)
    timeout: float = 5.0


@dataclass
class DomainsConfig:
    """Sender domains: the DNS records we tell customers to publish, DKIM keys and their rotation."""

    # Addresses mail leaves from, for the SPF records we recommend and check.
    sending_addresses: list[str] = field(default_factory=list)
    # A DNS zone we serve ourselves (hosted SPF, DKIM and DMARC records that customers CNAME or
    # include); empty: none, the self-hosted records only.
    hosted_zone: str = ""
    # Twisted endpoint strings our authoritative DNS server for hosted_zone listens on.
    dns_listen: list[str] = field(default_factory=list)
    # The host bounce domains' MX records point to; default: server.hostname.
    mx_host: str = ""
    # Our DMARC aggregate report mailbox (rua); default: dmarc@ mx_host.
    dmarc_address: str = ""
    # Base64 of the 32-byte key that encrypts DKIM private keys at rest; empty: one made on first
    # start and kept (mode 0600) in the data directory (smtpeter/domains/sealing.py).
    encryption_key: str = ""
    # Managed keys made for every sender domain, each signs (dual signatures, RFC 8463).
    dkim_algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    # A managed key signs this long before the next one takes over; the retired one stays
    # published this long after, for mail still in flight.
    rotation_days: float = 30.0
    retired_days: float = 7.0
    # Seconds between live DNS checks of every sender domain.
    check_interval: float = 3600.0


@dataclass
class WebhooksConfig:
    """Calls to customers' webhook receivers (smtpeter/webhooks/)."""

    # Networks whose receivers may be called although they are private or loopback (an operator's
    # own network); a receiver there needs no proof of control of its URL. None by default.
    allow_networks: list[str] = field(default_factory=list)
    # Seconds one call (connect, request, answer) may take.
    timeout: float = 15.0
    # Calls in flight at once to one endpoint (one hook).
    max_concurrency_per_endpoint: int = 4
    # Seconds before each retry of a failed call (Svix's: over 24 hours); after the last, it is given up.
    retry_schedule: list[float] = field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allow_networks]


@dataclass
class SuppressionConfig:
    """Each account's suppression list (smtpeter/suppressions/)."""

    # Two hard failures to one address within this many seconds suppress it (one 5.1.1 does at once).
    hard_failure_window: float = 7 * 86400.0
    # Seconds an entry made for repeated hard failures lasts (a dead domain may come back); 0: for good.
    hardbounce_expiry: float = 90 * 86400.0


@dataclass
class BackoffRule:
    """When a reply matches ``pattern``, pause and/or slow the destination for a while."""

    pattern: str = ""
    pause: float = 0.0  # seconds without any delivery to the destination
    messages_per_minute: float = 0.0  # 0: unchanged; else the rate for ``duration``
    max_connections: int = 0  # 0: unchanged; else the limit for ``duration``
    duration: float = 3600.0


@dataclass
class Profile:
    """Traffic shaping for one kind of destination; unset values come from "default"."""

    mx_suffixes: list[str] = field(default_factory=list)
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    messages_per_minute: float | None = None
    connections_per_minute: float | None = None
    idle_timeout: float | None = None
    tls: str | None = None  # "opportunistic", "required" or "disabled"
    backoff: list[BackoffRule] = field(default_factory=list)


@dataclass
class Timeouts:
    """Seconds to wait for each step of an outbound SMTP session (Postfix's defaults)."""

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    data_done: float = 600.0
    rset: float = 20.0
    quit: float = 30.0


@dataclass
class DeliveryConfig:
    # Keep accepted mail queued without delivering it (like Postfix's hold queue).
    hold: bool = False
    # This node's name on its leases; unique per node when several share one database.
    node: str = ""
    port: int = 25
    routes: dict[str, str] = field(default_factory=dict)
    helo_name: str = ""
    retry_schedule: list[float] = field(
        default_factory=lambda: [600.0, 600.0, 1800.0, 1800.0, 3600.0, 3600.0, 7200.0]
    )
    max_deliver_time: float = 86400.0
    # Recipients (and message bytes) held in memory at once; the rest of the queue stays on disk.
    window: int = 2000
    window_bytes: int = 256 * 1024 * 1024
    lease: float = 1800.0
    max_recipients_per_transaction: int = 100
    delay_warning: float = 14400.0
    # At shutdown, deliveries in progress get this long before they are cut.
    shutdown_grace: float = 10.0
    # Processes the outbound steps (line lengths, 7-bit, later CSS, tracking, DKIM) run in;
    # unset: one per core beside the reactor's; 0: the reactor's threads.
    transform_workers: int | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    profiles: dict[str, Profile] = field(default_factory=dict)
    backoff: list[BackoffRule] = field(default_factory=list)

    def route(self, domain: str) -> tuple[str, int] | None:
        """The smarthost for ``domain`` (an exact match, then "*"), if any."""
        target = self.routes.get(domain.lower()) or self.routes.get("*")
        if target is None:
            return None
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    mx: MXConfig = field(default_factory=MXConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    path: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_path.resolve() / 'smtpeter.sqlite3'}"

    @property
    def storage_label(self) -> str:
        """The storage url for messages: without its password."""
        parts = urlsplit(self.storage_url)
        if parts.password is None:
            return self.storage_url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()

    @property
    def public_url(self) -> str:
        return (self.http.public_url or f"http://{self.hostname}:8080").rstrip("/")


_LIST_FIELDS_ACCEPTING_STRING = {"listen", "listen_tls", "trusted_networks", "nameservers",
                                 "sending_addresses", "dns_listen"}


def _check_type(section: str, key: str, value: object, annotation: object) -> object:
    where = f"[{section}] {key}"
    origin = typing.get_origin(annotation)
    if origin in (list,):
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str) and key in _LIST_FIELDS_ACCEPTING_STRING:
            value = [value]
        if item_type is float and isinstance(value, list):
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                return [float(v) for v in value]
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{where} must be a list of {item_type.__name__}")
        return value
    if origin in (dict,):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where} must be a table of strings")
        return {k.lower(): v for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where} must be of type {annotation.__name__}")
    return value


def _build_section(cls: type, section: str, raw: object) -> object:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in [{section}]")
        annotation = hints[key]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is list and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list):
                raise ConfigError(f"[{section}] {key} must be a list of tables")
            values[key] = [_build_section(args[0], f"{section}.{key}", item) for item in value]
        elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            if not isinstance(value, dict):
                raise ConfigError(f"[{section}] {key} must be a table")
            values[key] = {name: _build_section(args[1], f"{section}.{key}.{name}", item)
                           for name, item in value.items()}
        elif origin is types.UnionType and type(None) in args:
            values[key] = None if value is None else _check_type(
                section, key, value, next(a for a in args if a is not type(None)))
        elif isinstance(annotation, types.GenericAlias) or origin:
            values[key] = _check_type(section, key, value, annotation)
        elif dataclasses.is_dataclass(annotation):
            values[key] = _build_section(annotation, f"{section}.{key}", value)
        else:
            values[key] = _check_type(section, key, value, annotation)
    return cls(**values)


def parse_config(raw: dict, path: str = "") -> Config:
    """Build a validated Config from a parsed TOML document.

    With the ``path`` of the file it came from, relative paths in it (and the
    default data directory) are taken relative to that file's folder, so the
    service and the CLI find the same data from any working directory.
    """
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        if name == "path" or name not in hints:
            raise ConfigError(f"unknown section [{name}]")
        sections[name] = _build_section(hints[name], name, value)
    config = Config(**sections, path=path)
    _validate(config)
    if path:
        _resolve_paths(config, Path(os.path.abspath(path)).parent)
    return config


def _resolve_paths(config: Config, base: Path) -> None:
    def resolve(value: str) -> str:
        return value if not value or os.path.isabs(value) else os.path.normpath(base / value)

    config.server.data_dir = resolve(config.server.data_dir)
    config.tls.certificate = resolve(config.tls.certificate)
    config.tls.key = resolve(config.tls.key)
    config.http.access_log = resolve(config.http.access_log)
    # sqlite:///relative/file or sqlite:////absolute/file (":memory:" stays as it is).
    database = config.storage.url.removeprefix("sqlite:///")
    if database != config.storage.url and database not in ("", ":memory:"):
        config.storage.url = "sqlite:///" + resolve(database)


def _validate(config: Config) -> None:
    try:
        config.smtp.networks()
    except ValueError as exc:
        raise ConfigError(f"[smtp] trusted_networks: {exc}") from None
    try:
        config.tracking.networks()
    except ValueError as exc:
        raise ConfigError(f"[tracking] allow_networks: {exc}") from None
    for pattern in config.tracking.bot_user_agents:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"[tracking] bot_user_agents: {pattern!r}: {exc}") from None
    if config.smtp.trusted_networks and not config.smtp.trusted_account:
        raise ConfigError("[smtp] trusted_networks needs trusted_account (the account they send as)")
    url = config.storage.url
    if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("[storage] url must start with sqlite:/// or postgresql://")
    if bool(config.tls.certificate) != bool(config.tls.key):
        raise ConfigError("[tls] certificate and key go together")
    for server in config.dns.nameservers:
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        try:
            ipaddress.ip_address(host or server)
            if port:
                int(port)
        except ValueError:
            raise ConfigError(f"[dns] nameservers: {server!r} is not IP[:port]") from None
    for name in ("max_message_size", "max_recipients", "max_line_length", "max_connections",
                 "max_connections_per_client", "max_errors"):
        if getattr(config.smtp, name) <= 0:
            raise ConfigError(f"[smtp] {name} must be positive")
    if (config.http.redirect_workers or 0) < 0:
        raise ConfigError("[http] redirect_workers must not be negative")
    for url in config.http.autoconfig_incoming:
        try:
            incoming_server(url)
        except ValueError as exc:
            raise ConfigError(f"[http] autoconfig_incoming: {exc}") from None
    _validate_delivery(config.delivery)
    _validate_domains(config)
    _validate_webhooks(config.webhooks)
    if config.suppression.hard_failure_window <= 0 or config.suppression.hardbounce_expiry < 0:
        raise ConfigError("[suppression] hard_failure_window must be positive, "
                          "hardbounce_expiry not negative")


_INCOMING = {"imaps": ("imap", "SSL", 993), "imap": ("imap", "STARTTLS", 143),
             "pop3s": ("pop3", "SSL", 995), "pop3": ("pop3", "STARTTLS", 110)}


def incoming_server(url: str) -> tuple[str, str, int, str]:
    """``imaps://host:993`` as (type, hostname, port, socket type) for autoconfig."""
    scheme, sep, rest = url.partition("://")
    host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest.rstrip("/"), "", "")
    if not sep or scheme not in _INCOMING or not host or (port and not port.isdigit()):
        raise ValueError(f"{url!r} is not imaps://, imap://, pop3s:// or pop3://host[:port]")
    kind, socket_type, default_port = _INCOMING[scheme]
    return kind, host, int(port) if port else default_port, socket_type


def _validate_delivery(delivery: DeliveryConfig) -> None:
    for domain, target in delivery.routes.items():
        host, colon, port = target.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"[delivery] routes: {domain} = {target!r} is not host:port")
    if not delivery.retry_schedule or any(s <= 0 for s in delivery.retry_schedule):
        raise ConfigError("[delivery] retry_schedule must be a non-empty list of positive seconds")
    for name in ("window", "lease", "max_recipients_per_transaction", "max_deliver_time"):
        if getattr(delivery, name) <= 0:
            raise ConfigError(f"[delivery] {name} must be positive")
    for name, profile in delivery.profiles.items():
        if profile.tls not in (None, "opportunistic", "required", "disabled"):
            raise ConfigError(f"[delivery.profiles.{name}] tls must be opportunistic, required or disabled")
        for rule in profile.backoff:
            _check_rule(f"delivery.profiles.{name}.backoff", rule)
    for rule in delivery.backoff:
        _check_rule("delivery.backoff", rule)


def _validate_domains(config: Config) -> None:
    """Check [domains] and fill in its defaults that come from elsewhere (mx_host, dmarc_address)."""
    domains = config.domains
    addresses = []
    for address in domains.sending_addresses:
        try:
            addresses.append(str(ipaddress.ip_address(address)))
        except ValueError:
            raise ConfigError(
                f"[domains] sending_addresses: {address!r} is not an IPv4 or IPv6 address") from None
    # Canonical forms: SPF records and checks compare them as text.
    domains.sending_addresses = addresses
    if domains.hosted_zone:
        domains.hosted_zone = _host_name("hosted_zone", domains.hosted_zone)
    if domains.dns_listen and not domains.hosted_zone:
        raise ConfigError("[domains] dns_listen needs hosted_zone (the zone it serves)")
    domains.mx_host = _host_name("mx_host" if domains.mx_host else "mx_host (server.hostname)",
                                 domains.mx_host or config.hostname)
    domains.dmarc_address = domains.dmarc_address or f"dmarc@{domains.mx_host}"
    local, at, host = domains.dmarc_address.rpartition("@")
    if not at or not local or any(c.isspace() or c in "<>,;\"" for c in local):
        raise ConfigError(f"[domains] dmarc_address: {domains.dmarc_address!r} is not an e-mail address")
    _host_name("dmarc_address", host)
    if domains.encryption_key:
        try:
            key = base64.b64decode(domains.encryption_key, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError("[domains] encryption_key must be the base64 of 32 bytes "
                              "(make one: head -c 32 /dev/urandom | base64)")
    if not domains.dkim_algorithms:
        raise ConfigError("[domains] dkim_algorithms must name at least one of " + ", ".join(ALGORITHMS))
    for algorithm in domains.dkim_algorithms:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"[domains] dkim_algorithms: {algorithm!r} is not one of "
                              + ", ".join(ALGORITHMS))
    if len(set(domains.dkim_algorithms)) != len(domains.dkim_algorithms):
        raise ConfigError("[domains] dkim_algorithms names an algorithm twice")
    for name in ("rotation_days", "retired_days", "check_interval"):
        if getattr(domains, name) <= 0:
            raise ConfigError(f"[domains] {name} must be positive")


def _validate_webhooks(webhooks: WebhooksConfig) -> None:
    try:
        webhooks.networks()
    except ValueError as exc:
        raise ConfigError(f"[webhooks] allow_networks: {exc}") from None
    if webhooks.timeout <= 0:
        raise ConfigError("[webhooks] timeout must be positive")
    if webhooks.max_concurrency_per_endpoint <= 0:
        raise ConfigError("[webhooks] max_concurrency_per_endpoint must be positive")
    if not webhooks.retry_schedule or any(s <= 0 for s in webhooks.retry_schedule):
        raise ConfigError("[webhooks] retry_schedule must be a non-empty list of positive seconds")


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _host_name(key: str, value: str) -> str:
    """``value`` as a DNS name (lower case, no final dot); ConfigError naming ``key`` if it is none."""
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(f"[domains] {key}: {value!r} is not a DNS name")
    return name


def _check_rule(where: str, rule: BackoffRule) -> None:
    try:
        re.compile(rule.pattern)
    except re.error as exc:
        raise ConfigError(f"[{where}] pattern {rule.pattern!r}: {exc}") from None
    if not rule.pattern:
        raise ConfigError(f"[{where}] needs a pattern")


def load_config(path: str | None) -> Config:
    """Read the TOML file at ``path``; no path means all defaults."""
    if not path:
        return parse_config({})
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse_config(raw, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
