"""Prometheus metrics every IOC process exports (``ioc_`` prefix, base units, ``_total`` counters).

Labels are bounded: route templates, topics, event types, services, areas. Never a meter, kiosk,
intersection, dossier or citizen id.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "ioc_http_requests_total",
    "HTTP requests by route template and status",
    ["service", "method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "ioc_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS_PRODUCED = Counter("ioc_events_produced_total", "Events acknowledged by the broker", ["topic", "type"])
EVENTS_CONSUMED = Counter(
    "ioc_events_consumed_total", "Events consumed and processed", ["consumer", "topic", "type"]
)
EVENTS_DEAD_LETTERED = Counter(
    "ioc_events_dead_lettered_total", "Records sent to the dead-letter topic", ["consumer", "topic"]
)
EVENTS_REJECTED = Counter(
    "ioc_ingest_rejected_total", "Items refused at ingest by validation", ["service", "kind", "reason"]
)
EVENTS_ACCEPTED = Counter("ioc_ingest_accepted_total", "Items accepted at ingest", ["service", "kind"])
LATE_INPUTS_IGNORED = Counter(
    "ioc_late_inputs_ignored_total",
    "Inputs for windows a processor no longer keeps (older than late data may revise), ignored",
    ["consumer"],
)
CONSUMER_LAG = Gauge(
    "ioc_consumer_lag_records", "Records behind the high watermark", ["consumer", "topic", "partition"]
)
STREAM_RECORDS_REFUSED = Counter(
    "ioc_stream_records_refused_total",
    "Records a stream worker refused to fold: their partition is not owned whole (every source topic) by it",
    ["consumer"],
)
STREAM_WRITES_FENCED = Counter(
    "ioc_stream_writes_fenced_total",
    "Batches of a partition a stream worker no longer owned when it came to write them: dropped, not written",
    ["consumer"],
)
PROCESSING_LATENCY = Histogram(
    "ioc_event_processing_latency_seconds",
    "From the event's ce_time to the end of its processing",
    ["consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
PUBLISH_SECONDS = Histogram(
    "ioc_publish_duration_seconds",
    "Time to have a publish acknowledged",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
LAST_PROCESSED = Gauge(
    "ioc_processor_last_processed_timestamp_seconds",
    "Unix time a processor last finished a batch",
    ["consumer"],
)
STATE_KEYS = Gauge(
    "ioc_processor_state_keys",
    "Keys of processor state held in memory over the partitions this worker owns (windows, entities...)",
    ["consumer"],
)
OUTBOX_BACKLOG = Gauge("ioc_outbox_backlog_events", "Outbox rows not yet published", ["service"])
KPI_VALUE = Gauge("ioc_kpi_value", "Latest KPI value per area", ["kpi", "scope_level", "scope_code"])
BUILD_INFO = Gauge("ioc_build_info", "Constant 1, labelled with the service", ["service", "version"])


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts requests and latency per *route template* (``/v1/meters/{meter_id}``), never per raw path."""

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(self.service, method, template, str(status["code"])).inc()
            HTTP_LATENCY.labels(self.service, method, template).observe(time.perf_counter() - started)


async def metrics_endpoint(_: Request) -> Response:
    return metrics_response()
