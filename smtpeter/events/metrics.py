"""Process-wide counters for /metrics (Prometheus text format, version 0.0.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

HELP = {
    "smtpeter_accepted_total": ("counter", "Recipients accepted into the queue (SMTP and API)."),
    "smtpeter_delivered_total": ("counter", "Recipients delivered."),
    "smtpeter_deferred_total": ("counter", "Delivery attempts that will be retried."),
    "smtpeter_failed_total": ("counter", "Recipients that failed for good (expired ones included)."),
    "smtpeter_expired_total": ("counter", "Recipients whose delivery time ran out."),
    "smtpeter_bounced_total": ("counter", "Delivery status notifications sent back to senders."),
    "smtpeter_queue_depth": ("gauge", "Recipients in the queue, still to be delivered."),
    "smtpeter_destination_connections": ("gauge", "Open outbound connections, by destination."),
    "smtpeter_destination_queued": ("gauge", "Transactions waiting for a connection, by destination."),
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(counters: Counter[str], gauges: Iterable[tuple[str, dict[str, str], float]]) -> str:
    """The exposition text: every known counter (0 if never counted), then the gauges."""
    lines: list[str] = []
    seen: set[str] = set()

    def declare(name: str) -> None:
        if name not in seen:
            seen.add(name)
            kind, text = HELP[name]
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

    for name, (kind, _) in HELP.items():
        if kind == "counter":
            declare(name)
            lines.append(f"{name} {counters.get(name, 0)}")
    for name, labels, value in gauges:
        declare(name)
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = str(value) if isinstance(value, int) else repr(float(value))
        lines.append(f"{name}{{{label_text}}} {number}" if label_text else f"{name} {number}")
    return "\n".join(lines) + "\n"
