"""Configuration: a TOML file read into typed, validated dataclasses.

Unknown sections or keys are errors, so a typo never silently falls back to a
default (an operator who writes ``trusted_network`` must hear about it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


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

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]


@dataclass
class MXConfig:
    listen: list[str] = field(default_factory=list)


@dataclass
class HTTPConfig:
    listen: list[str] = field(default_factory=lambda: ["tcp:8080"])
    public_url: str = ""


@dataclass
class TLSConfig:
    certificate: str = ""
    key: str = ""


@dataclass
class DNSConfig:
    nameservers: list[str] = field(default_factory=list)
    timeout: float = 5.0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    mx: MXConfig = field(default_factory=MXConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    path: str = ""

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_path.resolve() / 'smtpeter.sqlite3'}"

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()

    @property
    def public_url(self) -> str:
        return (self.http.public_url or f"http://{self.hostname}:8080").rstrip("/")


_LIST_FIELDS_ACCEPTING_STRING = {"listen", "listen_tls", "trusted_networks", "nameservers"}


def _check_type(section: str, key: str, value: object, annotation: object) -> object:
    where = f"[{section}] {key}"
    origin = typing.get_origin(annotation)
    if origin in (list,):
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str) and key in _LIST_FIELDS_ACCEPTING_STRING:
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{where} must be a list of {item_type.__name__}")
        return value
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return value
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
        if isinstance(annotation, types.GenericAlias) or typing.get_origin(annotation):
            values[key] = _check_type(section, key, value, annotation)
        elif dataclasses.is_dataclass(annotation):
            values[key] = _build_section(annotation, f"{section}.{key}", value)
        else:
            values[key] = _check_type(section, key, value, annotation)
    return cls(**values)


def parse_config(raw: dict, path: str = "") -> Config:
    """Build a validated Config from a parsed TOML document."""
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, value in raw.items():
        if name == "path" or name not in hints:
            raise ConfigError(f"unknown section [{name}]")
        sections[name] = _build_section(hints[name], name, value)
    config = Config(**sections, path=path)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    try:
        config.smtp.networks()
    except ValueError as exc:
        raise ConfigError(f"[smtp] trusted_networks: {exc}") from None
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
    return parse_config(raw, path)
