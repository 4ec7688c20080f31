"""``camim serve``'s Prometheus metrics, in a registry of their own per app (``prometheus_client``).

| metric | type | what |
|---|---|---|
| ``camim_requests_total{endpoint, status}`` | counter | answered requests |
| ``camim_request_duration_seconds{endpoint}`` | histogram | time from the request to its answer |
| ``camim_batch_size`` | histogram | posts per model forward |
| ``camim_forward_duration_seconds`` | histogram | time of one model forward |
| ``camim_queue_depth`` | gauge | posts waiting for a forward |
| ``camim_requests_in_flight`` | gauge | prediction requests admitted and not yet answered |
| ``camim_captioner_failures_total`` | counter | captioner errors (each answered in no-caption mode) |
| ``camim_body_bytes_held`` | gauge | bytes of request bodies held (read or being read, until answered) |
| ``camim_body_budget_refusals_total`` | counter | requests answered 503 because their body did not fit in it |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from camim.errors import CamimError

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise CamimError(
        f"`camim serve` needs the optional serve extra ({exc.name} is missing): pip install 'camim[serve]'"
    ) from None

ENDPOINTS = ("/", "/api/info", "/api/predict", "/api/predict_batch", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _ReadCounter:
    """A counter read at scrape time from the count's owner (the count lives where the events happen)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]):
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


class ServerMetrics:
    """The metrics of one app; :meth:`render` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        queue_depth: Callable[[], int],
        in_flight: Callable[[], int],
        captioner_failures: Callable[[], int],
        body_bytes_held: Callable[[], int],
        body_budget_refusals: Callable[[], int],
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("camim_requests", "Answered requests.", ("endpoint", "status"), registry=r)
        self.latency = Histogram(
            "camim_request_duration_seconds",
            "Time from the request to its answer.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "camim_batch_size", "Posts per model forward.", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward = Histogram(
            "camim_forward_duration_seconds",
            "Time of one model forward.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        Gauge("camim_queue_depth", "Posts waiting for a model forward.", registry=r).set_function(queue_depth)
        Gauge(
            "camim_requests_in_flight", "Prediction requests admitted and not yet answered.", registry=r
        ).set_function(in_flight)
        Gauge(
            "camim_body_bytes_held",
            "Bytes of request bodies held, read or being read, until answered (the body budget's use).",
            registry=r,
        ).set_function(body_bytes_held)
        r.register(
            _ReadCounter(
                "camim_captioner_failures",
                "Captioner errors; each post was answered in no-caption mode.",
                captioner_failures,
            )
        )
        r.register(
            _ReadCounter(
                "camim_body_budget_refusals",
                "Requests answered 503 because their body did not fit in the budget of bodies held.",
                body_budget_refusals,
            )
        )

    def observe_request(self, path: str, status: str, seconds: float) -> None:
        """Count one answered request (unknown paths as ``other``, so a scan cannot grow the label set)."""
        endpoint = path if path in ENDPOINTS or path.startswith("/static/") else "other"
        endpoint = "/static" if endpoint.startswith("/static/") else endpoint
        self.requests.labels(endpoint, status).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model forward of ``size`` posts."""
        self.batch_size.observe(size)
        self.forward.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
