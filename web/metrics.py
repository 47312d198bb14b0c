"""The web app's metrics in Prometheus' format, at /metrics, and /status: Prometheus' graph page
showing the few series people look at first.

Under gunicorn (web/gunicorn_config.py) every worker writes its series to files in
PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker adds up all of them (prometheus_client's
multiprocess mode), so one target is correct however many workers answer. Without that variable
(the app in a test process) the series are this process's own.

Labels hold bounded values only: the route's rule (`/flights/delays/predict/classify_realtime/
response/<request_id>`), never the path a client sent.

The status view is Prometheus' own graph page with the platform's recording rules as its
expressions (see README, "Operating it", for why not a page of this app's own).
"""

import os
import time
import urllib.parse
from contextlib import contextmanager

from flask import Blueprint, Flask, Response, current_app, g, redirect, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED_ROUTE = "unmatched"  # a URL no route serves (a 404), whatever the client asked for

REQUESTS = Counter("flight_web_requests", "Requests answered, by route, method and status.",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("flight_web_request_seconds", "Time to answer a request, by route.",
                            ["route"], buckets=SECONDS_BUCKETS)
PUBLISH_SECONDS = Histogram("flight_web_publish_seconds", "From a prediction request's POST to "
                            "Kafka's acknowledgement of it (all in-sync replicas).",
                            buckets=SECONDS_BUCKETS)
LONG_POLLS_WAITING = Gauge("flight_web_long_polls_waiting", "Answer requests held waiting for their "
                           "answer (?wait=) right now.", multiprocess_mode="livesum")
LONG_POLL_SECONDS = Histogram("flight_web_long_poll_seconds", "How long a held answer request "
                              "waited, by whether its answer came.", ["outcome"],
                              buckets=SECONDS_BUCKETS)
UNAVAILABLE = Counter("flight_web_unavailable", "Answers 503 because a service was unreachable, by "
                      "service.", ["service"])

# What the status view draws, each one of the recording rules (flight_platform.monitoring.prometheus).
STATUS_EXPRESSIONS = [
    "flight:stream_answers:rate",
    "flight:stream_request_to_answer_seconds:p50",
    "flight:stream_request_to_answer_seconds:p99",
    "flight:consumer_group_lag:sum",
    "flight:stream_dead_letters:rate",
    "flight:web_requests:rate",
]
STATUS_RANGE = "1h"

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
def exposition():
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def status_url(prometheus_url: str) -> str:
    """Prometheus' graph page with one graph per STATUS_EXPRESSIONS, over the last STATUS_RANGE."""
    query = {}
    for i, expression in enumerate(STATUS_EXPRESSIONS):
        query |= {f"g{i}.expr": expression, f"g{i}.tab": "0", f"g{i}.range_input": STATUS_RANGE}
    return f"{prometheus_url.rstrip('/')}/graph?{urllib.parse.urlencode(query)}"


@metrics.get("/status")
def status():
    prometheus_url = current_app.extensions["service_clients"].settings.prometheus_url
    if not prometheus_url:
        return {"status": "ERROR", "errors": {"url": "no Prometheus is configured for the status view "
                                                     "(FLIGHT_PLATFORM_PROMETHEUS_URL)"}}, 404
    return redirect(status_url(prometheus_url))


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
    REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    if "metrics_started" in g:
        REQUEST_SECONDS.labels(route).observe(time.perf_counter() - g.metrics_started)
    return response


@contextmanager
def long_poll():
    """Count a held answer request while it waits; the block sets `outcome["answered"]`."""
    outcome = {"answered": False}
    started = time.perf_counter()
    LONG_POLLS_WAITING.inc()
    try:
        yield outcome
    finally:
        LONG_POLLS_WAITING.dec()
        LONG_POLL_SECONDS.labels("answered" if outcome["answered"] else "timed_out").observe(
            time.perf_counter() - started)


def install(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_count)
    app.register_blueprint(metrics)
