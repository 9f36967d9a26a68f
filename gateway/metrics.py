"""Prometheus ``/metrics``: what every request adds (a middleware), and what is read at scrape time.

Guarded by ``settings.metrics``: ``off`` (no route: 404), ``open`` (no credential), ``admin`` (default: the admin
bearer key, as for /admin — Prometheus sends it with ``authorization: {credentials: …}`` in its scrape config).

Per request (``observe_requests``, the app's outermost middleware): a count by route template, method, model and
status, the latency until the last body byte, and for streams the time until the first event is sent (vLLM sends
its first chunk with the first generated token, so this is the time to first token as the client sees it, less the
network). The model label is the caller's model id, set only once the serving pool has resolved it (a request for
a model that does not exist cannot make up label values). Counts live in ``serving/metrics.py``.

At scrape time (``StateCollector``), read from the database — so every gateway reports the same numbers — queue
depth and the age of the oldest queued item per work kind (fine-tuning jobs, eval runs, exports, batches,
background responses) and the number of
each kind in each state; and from the answering process's engine pool the replicas' states, in-flight requests and
loaded adapters.

Several processes behind one port (``tunegate serve --workers N``): prometheus_client's multiprocess mode. The CLI
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start; each process writes its counters
to its own memory-mapped files there, and whichever process answers a scrape sums them all
(``MultiProcessCollector``). One process (one pod, one `tunegate serve`) uses the ordinary in-memory registry, plus
the process and GC collectors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import func, select

from gateway.ratelimit.limiter import MeteredUsage
from serving import metrics as m
from storage.accounts import Principal
from storage.tables import Batch, EvalRun, Export, FineTuningJob, StoredResponse

_STREAM = b"text/event-stream"
# work kinds: (table, its queued statuses, which rows count); every state is reported, the queued ones also as queue
# depth / oldest age. A batch waits for a worker while "validating"; a background response runs in a gateway.
WORK: dict[str, tuple[Any, tuple[str, ...], Any]] = {
    "fine_tuning_job": (FineTuningJob, ("validating_files", "queued"), None),
    "eval_run": (EvalRun, ("queued",), None),
    "export": (Export, ("queued",), None),
    "batch": (Batch, ("validating",), None),
    "background_response": (StoredResponse, ("queued",), StoredResponse.background == True),  # noqa: E712 - SQL
}
UNMATCHED = "unmatched"  # the route label of a request no route took (404, 405): paths a caller makes up stay out
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_requests(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        m.request_labels.set(state)
        status, first = 500, 0.0
        stream = False

        async def send_observed(message: Message) -> None:
            nonlocal status, first, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                stream = any(k == b"content-type" and v.startswith(_STREAM) for k, v in message.get("headers", ()))
            elif stream and not first and message.get("body"):
                first = time.perf_counter()
            await send(message)

        state["metrics_observed"] = True  # count_unmatched leaves this request alone
        try:
            await app(scope, receive, send_observed)
        finally:
            end = time.perf_counter()
            route = scope.get("path_template") or "unmatched"
            model = state.get("metrics_model", "")
            m.REQUESTS.labels(route, scope.get("method", ""), model, str(status)).inc()
            m.LATENCY.labels(route, model).observe(end - started)
            if first:
                m.TTFT.labels(route, model).observe(first - started)

    return middleware


async def count_unmatched(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: Litestar runs middleware per route handler, so a request no route took (404, 405)
    never reaches ``observe_requests``; it is counted here under ``route="unmatched"`` (and a method outside the
    standard ones as ``OTHER``), never its path, so a scanner cannot mint label values."""
    if message["type"] != "http.response.start" or scope["type"] != "http":
        return
    state = scope.setdefault("state", {})
    if state.get("metrics_observed"):
        return
    method = scope.get("method", "")
    m.REQUESTS.labels(UNMATCHED, method if method in _METHODS else "OTHER", "", str(message["status"])).inc()


class CountedUsage(MeteredUsage):
    """The usage recorder that also counts tokens per model."""

    def add(self, principal: Principal, model: str, endpoint: str, usage: dict | None, *args: Any, **kw: Any) -> None:
        if isinstance(usage, dict):
            for direction in ("prompt", "completion"):
                n = usage.get(f"{direction}_tokens")
                if isinstance(n, int) and n > 0:
                    m.TOKENS.labels(model, direction).inc(n)
        super().add(principal, model, endpoint, usage, *args, **kw)


def _gauge(name: str, doc: str, labels: list[str]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, labels=labels)


class StateCollector:
    """Gauges computed when scraped: work queues and states (database), engine replicas (this process's pool)."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        depth = _gauge("tunegate_queue_depth", "Work items waiting for a worker, by kind.", ["kind"])
        age = _gauge(
            "tunegate_queue_oldest_age_seconds",
            "Age (since creation) of the oldest queued work item, by kind; 0 when none waits.",
            ["kind"],
        )
        states = _gauge(
            "tunegate_work_items",
            "Work items in each state, by kind (fine-tuning jobs: "
            "validating_files … succeeded, paused; eval runs; exports; batches; background "
            "responses).",
            ["kind", "status"],
        )
        now = time.time()
        with self.services.db.session() as s:
            for kind, (table, queued, which) in WORK.items():
                query = select(table.status, func.count(), func.min(table.created_at))
                rows = s.exec((query.where(which) if which is not None else query).group_by(table.status)).all()
                waiting, oldest = 0, None
                for status, count, created in rows:
                    states.add_metric([kind, status], count)
                    if status in queued:
                        waiting += count
                        oldest = created if oldest is None else min(oldest, created)
                depth.add_metric([kind], waiting)
                age.add_metric([kind], max(0.0, now - oldest) if oldest is not None else 0.0)
        yield from (depth, age, states)
        replicas = _gauge(
            "tunegate_engine_replicas",
            "Engine replicas per base model in each state (starting | ready "
            "| down), as this gateway process sees them.",
            ["base_model", "state"],
        )
        up = _gauge("tunegate_engine_replica_ready", "1 if the replica is ready, else 0.", ["base_model", "url"])
        in_flight = _gauge(
            "tunegate_engine_in_flight", "Requests this gateway process has open to the replica.", ["base_model", "url"]
        )
        loaded = _gauge(
            "tunegate_engine_adapters_loaded",
            "Adapters this gateway process has loaded on the replica.",
            ["base_model", "url"],
        )
        for base, group in self.services.engines.replicas.items():
            counts = dict.fromkeys(("starting", "ready", "down"), 0)
            for r in group:
                counts[r.state] = counts.get(r.state, 0) + 1
                up.add_metric([base, r.url], 1.0 if r.state == "ready" else 0.0)
                in_flight.add_metric([base, r.url], r.in_flight)
                loaded.add_metric([base, r.url], len(r.loaded))
            for state, n in counts.items():
                replicas.add_metric([base, state], n)
        yield from (replicas, up, in_flight, loaded)


def exposition(services: Any) -> tuple[bytes, str]:
    """The text exposition: this process's counters (or every process's, in multiprocess mode) + the state gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(services))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    # Litestar adds the charset itself
    return generate_latest(counters) + generate_latest(state), CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def metrics_routes(mode: str) -> list[Any]:
    if mode == "off":
        return []
    from gateway.auth import require_admin  # here: gateway.auth imports the services, which import this module

    @get("/metrics", include_in_schema=False, sync_to_thread=True, guards=[require_admin] if mode == "admin" else [])
    def metrics(request: Request) -> Response[bytes]:
        services = request.app.state.services
        if not m.AVAILABLE:
            return Response(
                content=b"prometheus-client is not installed (pip install 'tunegate[metrics]')\n",
                status_code=503,
                media_type="text/plain",
            )
        body, content_type = exposition(services)
        return Response(content=body, media_type=content_type)

    return [metrics]
