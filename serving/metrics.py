"""The process's Prometheus metric objects (``/metrics``: gateway/metrics.py renders them).

Counters and histograms only: they are what ``prometheus_client``'s multiprocess mode sums correctly across the
gateway processes of ``tunegate serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR``, set by the CLI before this module
is first imported). Gauges — queue depth and age, job states, engine replicas — are computed at scrape time by the
collector in gateway/metrics.py, from the database and the scraping process's engine pool, so no gauge has to be
merged across processes.

Without the ``metrics`` extra (prometheus-client) every object here is a no-op and ``/metrics`` answers 503.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

try:
    import prometheus_client
except ImportError:  # the extra is not installed: count nothing
    prometheus_client = None  # type: ignore[assignment]  # mypy types the name as the module; None means absent

AVAILABLE = prometheus_client is not None
# the labels of the request being served: its scope's state, set by the gateway's metrics middleware
request_labels: ContextVar[dict[str, Any] | None] = ContextVar("tunegate_metrics_labels", default=None)

# request latency: from 1 ms (a cached GET) to minutes (a long stream)
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Noop:
    def labels(self, *_: Any, **__: Any) -> _Noop:
        return self

    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
    return prometheus_client.Counter(name, doc, labels) if prometheus_client else _Noop()


def _histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Any:
    return prometheus_client.Histogram(name, doc, labels, buckets=buckets) if prometheus_client else _Noop()


REQUESTS = _counter(
    "tunegate_http_requests",
    "HTTP requests answered, by route template, method, model and status.",
    ("route", "method", "model", "status"),
)
LATENCY = _histogram(
    "tunegate_http_request_duration_seconds",
    "From the request's arrival to its last body byte (a stream's end), by route and model.",
    ("route", "model"),
    LATENCY_BUCKETS,
)
TTFT = _histogram(
    "tunegate_time_to_first_token_seconds",
    "Streamed completions: from the request's arrival to the first event sent to the client.",
    ("route", "model"),
    TTFT_BUCKETS,
)
TOKENS = _counter(
    "tunegate_tokens",
    "Tokens of completions as the engines reported them (direction: prompt | completion), by model.",
    ("model", "direction"),
)
RATE_LIMITED = _counter(
    "tunegate_rate_limit_rejections",
    "Requests refused with 429 by the rate limiter, by scope (org | key) and limit (requests | tokens | streams).",
    ("scope", "limit"),
)
ADAPTER_LOADS = _counter(
    "tunegate_adapter_loads",
    "LoRA adapters loaded onto an engine replica (outcome: loaded | failed).",
    ("base_model", "outcome"),
)
ADAPTER_UNLOADS = _counter(
    "tunegate_adapter_unloads",
    "LoRA adapters unloaded from an engine replica (reason: "
    "evicted — the least recently used, past max_adapters_per_engine — | deleted).",
    ("base_model", "reason"),
)


def note_model(model: str) -> None:
    """The serving pool resolved the request's model: label this request's metrics with it."""
    state = request_labels.get()
    if state is not None:
        state["metrics_model"] = model
