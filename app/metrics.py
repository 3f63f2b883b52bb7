"""Prometheus metrics of the service, correct with several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``bloodcells serve`` sets it for more than one worker), each
worker writes its values to files there and /metrics adds up every worker's; without it, the
process's own registry is served. prometheus_client chooses between the two when it is imported,
so the variable must be set before the workers start.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series double the exposition for a timestamp nobody graphs (multiprocess mode has none).
disable_created_metrics()

# Requests last about a millisecond: buckets from 0.5 ms up, not prometheus_client's 5 ms default.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("bloodcells_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("bloodcells_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["method", "route", "status"], buckets=LATENCY_BUCKETS)
INFERENCE = Histogram("bloodcells_inference_seconds", "onnxruntime time of one request's images (a whole batch)",
                      ["mode"], buckets=INFERENCE_BUCKETS)
PREPROCESS = Histogram("bloodcells_preprocess_seconds", "Time to decode and preprocess one image",
                       ["mode"], buckets=INFERENCE_BUCKETS)
PREDICTIONS = Counter("bloodcells_predictions", "Images classified, by mode and predicted class", ["mode", "label"])
SHED = Counter("bloodcells_shed_requests", "Requests refused with 503 overloaded (load shedding), all routes")
CONNECTIONS_CLOSED = Counter("bloodcells_connections_closed", "Connections the HTTP server closed or refused "
                             "itself, by reason (a timeout, a limit, a malformed request)", ["reason"])
REJECTED = Counter("bloodcells_rejected_inputs", "Requests or batch files refused, by reason (the error code)",
                   ["reason"])
COALESCED = Histogram("bloodcells_coalesced_images", "Small images a busy worker ran back to back in one threadpool "
                      "hop (BLOODCELLS_COALESCE_IMAGES)", buckets=(1, 2, 4, 8, 16, 32, 64))


@functools.lru_cache(maxsize=None, typed=True)  # typed: 1 and True are one key untyped, two series to prometheus
def labelled(metric: Any, *values: Any) -> Any:
    """``metric.labels(*values)``, looked up once: ``labels()`` converts, checks and locks on every call
    (~1.2 us), and a request reaches five series. The label values are bounded sets (routes, statuses,
    modes, classes), so the cache holds no more children than the metrics themselves do."""
    return metric.labels(*values)


def render() -> tuple[bytes, str]:
    """The exposition text of every worker (multiprocess mode) or of this process."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
