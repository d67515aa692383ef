"""The service's metrics, kept and exposed by prometheus_client.

Every ``Metrics`` has a registry of its own, not the library's process-wide default, so
several services in one process (the tests run many) count apart. Counters move where things
happen (``count``); the gauges are values of the moment, set when /metrics is asked for
(``observe``) and rendered right after, on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

COUNTERS = {
    "smtpeter_accepted_total": "Recipients accepted into the queue (SMTP and API).",
    "smtpeter_delivered_total": "Recipients delivered.",
    "smtpeter_deferred_total": "Delivery attempts that will be retried.",
    "smtpeter_failed_total": "Recipients that failed for good (expired ones included).",
    "smtpeter_expired_total": "Recipients whose delivery time ran out.",
    "smtpeter_bounced_total": "Delivery status notifications sent back to senders.",
    "smtpeter_clicks_total": "Clicks on tracked links by people (machines not counted).",
    "smtpeter_bot_clicks_total": "Clicks on tracked links by machines (scanners, previews; events/bots.py).",
    "smtpeter_opens_total": "Opens (tracked image loads) by people (machines not counted).",
    "smtpeter_bot_opens_total": "Opens by machines (image proxies that load every message, scanners).",
    "smtpeter_received_total": "Messages mx.listen accepted (bounces, replies, complaints, DMARC reports).",
    "smtpeter_bounces_received_total": "Bounces received and recorded about our recipients (mx.listen).",
    "smtpeter_responses_received_total": "Auto-replies received about our recipients (mx.listen).",
    "smtpeter_complaints_received_total": "Complaints (ARF reports) about our recipients (mx.listen).",
    "smtpeter_hits_dropped_total": "Clicks and opens not recorded: too many were waiting to be written "
                                   "(events/hits.py MAX_PENDING; storage slow or down).",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {name: Counter(name, text, registry=self.registry)
                          for name, text in COUNTERS.items()}
        self._queue_depth = Gauge("smtpeter_queue_depth", "Recipients in the queue, still to be delivered.",
                                  registry=self.registry)
        self._connections = Gauge("smtpeter_destination_connections",
                                  "Open outbound connections, by destination.", ["destination"],
                                  registry=self.registry)
        self._queued = Gauge("smtpeter_destination_queued",
                             "Transactions waiting for a connection, by destination.", ["destination"],
                             registry=self.registry)
        self._paused = Gauge("smtpeter_destination_paused",
                             "1 while a destination is paused (by a backoff rule or the operator).",
                             ["destination"], registry=self.registry)
        self._deferral = Gauge("smtpeter_destination_deferral_ratio",
                               "Of the recipients attempted in the last 15 minutes, the share deferred "
                               "(no value without attempts).", ["destination"], registry=self.registry)

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to one of COUNTERS."""
        self._counters[name].inc(amount)

    def observe(self, queue_depth: int, destinations: Mapping[str, Mapping[str, Any]]) -> None:
        """Set the gauges just before the registry is rendered: the queue depth (a storage query,
        so it is asked for before rendering, not during it) and the dispatcher's ``stats()``."""
        self._queue_depth.set(queue_depth)
        for gauge in (self._connections, self._queued, self._paused, self._deferral):
            gauge.clear()  # a destination that is gone leaves no stale value behind
        for destination, stats in sorted(destinations.items()):
            self._connections.labels(destination).set(stats["sessions"])
            self._queued.labels(destination).set(stats["queued"])
            self._paused.labels(destination).set(int(stats["paused"]))
            if stats["deferral_rate"] is not None:
                self._deferral.labels(destination).set(stats["deferral_rate"])
