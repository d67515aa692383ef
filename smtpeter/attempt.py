"""What a delivery attempt found out: about the receiving server, and about each recipient.

Plain records: the delivery client makes them, the scheduler decides from
them what comes next, and the events and DSNs report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capabilities:
    """What the server said it supports in its EHLO reply (nothing after HELO)."""

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls: bool = False
    enhanced_status_codes: bool = False


@dataclass
class Peer:
    """Where a session is connected, for events: their MX host and IP, our IP, TLS details."""

    mx: str
    ip: str
    port: int
    local_ip: str = ""
    tls: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass
class RecipientResult:
    """What the peer said about one recipient."""

    address: str
    state: str  # the SMTP step the verdict came at: rcptto, data, message, ...
    code: int | None
    status: str | None
    description: str
    delivered: bool = False
    permanent: bool = False
    peer: Peer | None = None
