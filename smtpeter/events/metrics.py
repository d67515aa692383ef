"""The service's metrics, kept and exposed by prometheus_client.

Every ``Metrics`` has a registry of its own, not the library's process-wide default, so
several services in one process (the tests run many) count apart. Counters move where things
happen (``count``); the gauges are values of the moment, taken when /metrics is asked for
(``observe``) and rendered by the registry right after.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

COUNTERS = {
    "smtpeter_accepted_total": "Recipients accepted into the queue (SMTP and API).",
    "smtpeter_delivered_total": "Recipients delivered.",
    "smtpeter_deferred_total": "Delivery attempts that will be retried.",
    "smtpeter_failed_total": "Recipients that failed for good (expired ones included).",
    "smtpeter_expired_total": "Recipients whose delivery time ran out.",
    "smtpeter_bounced_total": "Delivery status notifications sent back to senders.",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {name: Counter(name, text, registry=self.registry)
                          for name, text in COUNTERS.items()}
        self._gauges = _Gauges()
        self.registry.register(self._gauges)

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to one of COUNTERS."""
        self._counters[name].inc(amount)

    def observe(self, queue_depth: int, destinations: Mapping[str, Mapping[str, Any]]) -> None:
        """The gauges' values for the next rendering: the queue depth (a storage query, so it is
        asked for before rendering, not during it), and the dispatcher's ``stats()``.

        Called on the reactor thread: prometheus_client renders in a worker thread, which must
        not read the dispatcher's live state, only this copy.
        """
        self._gauges.values = (queue_depth, {key: (stats["sessions"], stats["queued"])
                                             for key, stats in destinations.items()})


class _Gauges:
    """A collector of the gauges as last observed (one tuple, swapped whole: a rendering in
    another thread sees one observation, never half of two)."""

    def __init__(self) -> None:
        self.values: tuple[int, dict[str, tuple[int, int]]] = (0, {})

    def describe(self) -> Iterator[Metric]:
        # The registry learns the names from here (for its ``name[]`` filter) without a collect.
        return self._families(0, {})

    def collect(self) -> Iterator[Metric]:
        return self._families(*self.values)

    @staticmethod
    def _families(queue_depth: int, destinations: dict[str, tuple[int, int]]) -> Iterator[Metric]:
        yield GaugeMetricFamily("smtpeter_queue_depth", "Recipients in the queue, still to be delivered.",
                                value=queue_depth)
        connections = GaugeMetricFamily("smtpeter_destination_connections",
                                        "Open outbound connections, by destination.", labels=["destination"])
        queued = GaugeMetricFamily("smtpeter_destination_queued",
                                   "Transactions waiting for a connection, by destination.",
                                   labels=["destination"])
        for key, (sessions, waiting) in sorted(destinations.items()):
            connections.add_metric([key], sessions)
            queued.add_metric([key], waiting)
        yield connections
        yield queued
