"""Prometheus metrics of a worker, through ``prometheus_client`` (an optional extra).

``pip install 'sharded-queue[metrics]'``. Nothing here imports
``prometheus_client`` until a `Metrics` is created, and a `Worker` without one
pays a single ``None`` check per batch.

Every metric has the label ``handler`` (the stored handler name):

=====================================  =========  ==============================================
name                                   type       what
=====================================  =========  ==============================================
``sharded_queue_performed_total``      counter    messages whose ``perform`` call returned
``sharded_queue_failed_total``         counter    ``perform`` calls that raised or timed out
``sharded_queue_dead_lettered_total``  counter    messages moved to the dead letters
``sharded_queue_batch_size``           histogram  messages per ``perform`` call
``sharded_queue_perform_seconds``      histogram  duration of ``perform`` calls, failed ones too
``sharded_queue_sojourn_seconds``      histogram  per message, ``enqueued_at`` (the producer's
                                                  clock) to the end of its successful perform
``sharded_queue_depth``                gauge      messages waiting, sampled every ``sample_interval``
``sharded_queue_lag_seconds``          gauge      age of the oldest waiting message, sampled
=====================================  =========  ==============================================

Depth and lag are the totals of `sharded_queue.stats`, sampled by the worker
(one set of reads per ``sample_interval``), so every worker process exports
the same queue-wide values: aggregate them with ``max``, not ``sum``.

This module is a leaf: it imports nothing of the library, and is handed plain
numbers by the worker.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
PERFORM_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SOJOURN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """A worker's Prometheus metrics, in a registry of their own.

    Pass it to ``Worker(queue, metrics=Metrics())`` and expose it with `serve`
    (or mount ``metrics.registry`` in your own exporter).

    Args:
        registry: Where to register the metrics; default a new
            ``prometheus_client.CollectorRegistry`` (never the global default, so
            several workers in one process do not collide).
        sample_interval: Seconds between two samples of depth and lag.

    Raises:
        ImportError: ``prometheus_client`` is not installed.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, sample_interval: float = 10.0) -> None:
        try:
            import prometheus_client as prometheus
        except ImportError as exc:  # pragma: no cover - the extra is installed in the test environment
            raise ImportError("Metrics need prometheus_client: pip install 'sharded-queue[metrics]'") from exc
        if not sample_interval > 0:
            raise ValueError(f"sample_interval must be > 0 seconds, got {sample_interval!r}")
        self.registry = registry if registry is not None else prometheus.CollectorRegistry()
        self.sample_interval = sample_interval
        where: dict[str, Any] = {"labelnames": ["handler"], "registry": self.registry}
        self.performed = prometheus.Counter("sharded_queue_performed", "Messages whose perform call returned", **where)
        self.failed = prometheus.Counter("sharded_queue_failed", "perform calls that raised or timed out", **where)
        self.dead_lettered = prometheus.Counter(
            "sharded_queue_dead_lettered", "Messages moved to the dead letters", **where
        )
        self.batch_size = prometheus.Histogram(
            "sharded_queue_batch_size", "Messages per perform call", buckets=BATCH_BUCKETS, **where
        )
        self.perform_seconds = prometheus.Histogram(
            "sharded_queue_perform_seconds",
            "Duration of perform calls, failed ones too",
            buckets=PERFORM_BUCKETS,
            **where,
        )
        self.sojourn_seconds = BatchHistogram(
            "sharded_queue_sojourn_seconds",
            "Per message, from enqueued_at (the producer's clock) to the end of its successful perform",
            SOJOURN_BUCKETS,
        )
        self.registry.register(self.sojourn_seconds)
        self.depth = prometheus.Gauge("sharded_queue_depth", "Messages waiting (sampled)", **where)
        self.lag_seconds = prometheus.Gauge(
            "sharded_queue_lag_seconds", "Age of the oldest waiting message (sampled)", **where
        )
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on ``addr:port`` from a daemon thread; returns the port.

        Port 0 picks a free one.
        """
        from prometheus_client import start_http_server

        if self._server is not None:
            raise RuntimeError("this Metrics is already served")
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (if `serve` was called)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # --- what the worker reports (only when metrics are on) ---

    def declare(self, handlers: Iterable[str]) -> None:
        """Make every counter series of ``handlers`` exist from the start, at 0."""
        for handler in handlers:
            for metric in (self.performed, self.failed, self.dead_lettered):
                metric.labels(handler)

    def record_batch(
        self, handler: str, count: int, enqueued: Sequence[float], started: float, finished: float
    ) -> None:
        """A ``perform`` call of ``count`` messages (enqueued at ``enqueued``) returned: count it
        and observe its size, duration and sojourns."""
        self.performed.labels(handler).inc(count)
        self.batch_size.labels(handler).observe(count)
        self.perform_seconds.labels(handler).observe(finished - started)
        self.sojourn_seconds.observe_batch(handler, finished, enqueued)

    def record_failure(self, handler: str, started: float, finished: float) -> None:
        """A ``perform`` call raised or timed out."""
        self.failed.labels(handler).inc()
        self.perform_seconds.labels(handler).observe(finished - started)

    def record_dead_letters(self, handler: str, count: int) -> None:
        """``count`` messages went to the dead letters."""
        self.dead_lettered.labels(handler).inc(count)

    def record_backlog(self, handler: str, depth: int, lag: float | None) -> None:
        """A sample of ``handler``'s queue-wide depth and lag (seconds, None when nothing waits)."""
        self.depth.labels(handler).set(depth)
        self.lag_seconds.labels(handler).set(lag or 0.0)


class BatchHistogram:
    """A Prometheus histogram with the label ``handler``, observed a batch at a time.

    The sojourns of a batch all end at the same ``finished``: sorting the
    batch's enqueue times once and bisecting them per bucket costs a few
    microseconds per batch, where ``Histogram.observe`` per message would cost
    about a microsecond per message. Exposed through the registry as a custom
    collector, the samples are those of a ``prometheus_client.Histogram``.

    Args:
        name: Metric name (``_bucket``, ``_count`` and ``_sum`` are added).
        documentation: Its help text.
        buckets: Finite upper bounds in seconds, ascending (``+Inf`` is added).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self._series: dict[str, list[float]] = {}  # handler -> cumulative count per bound, count, sum
        self._lock = threading.Lock()  # collect() runs in the HTTP server's thread

    def observe_batch(self, handler: str, finished: float, enqueued: Sequence[float]) -> None:
        """Observe ``finished - e`` for every enqueue time ``e`` of a batch."""
        ordered = sorted(enqueued)
        count = len(ordered)
        # sojourn <= bound  <=>  enqueued >= finished - bound
        within = [count - bisect.bisect_left(ordered, finished - bound) for bound in self.bounds]
        total = count * finished - sum(ordered)
        with self._lock:
            series = self._series.get(handler)
            if series is None:
                series = self._series[handler] = [0.0] * (len(self.bounds) + 2)
            for position, number in enumerate(within):
                series[position] += number
            series[-2] += count
            series[-1] += total

    def collect(self) -> Iterator[Metric]:
        """The histogram's samples, for the registry."""
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(self.name, self.documentation, labels=["handler"])
        with self._lock:
            snapshot = {handler: list(series) for handler, series in self._series.items()}
        for handler, series in snapshot.items():
            buckets = [(repr(bound), series[position]) for position, bound in enumerate(self.bounds)]
            family.add_metric([handler], [*buckets, ("+Inf", series[-2])], series[-1])
        yield family

    def describe(self) -> Iterator[Metric]:
        """The histogram's name, without samples (the registry checks for duplicates with it)."""
        from prometheus_client.core import HistogramMetricFamily

        yield HistogramMetricFamily(self.name, self.documentation, labels=["handler"])
