"""What a stream worker tells Prometheus, and how Prometheus finds it.

Each worker (one run process) serves its own registry on an HTTP port of its own, picked by the
system, and announces it with a file in the targets directory that Prometheus' file-based service
discovery reads (`stream-<host>-<pid>.json`): N workers are N targets, and no person assigns ports.
A worker removes its file when it stops; one killed leaves a file behind (its target shows as down
until the next worker to start on that host removes the files of processes that are gone).

Names follow Prometheus' conventions: base units (seconds), `_total` counters (added by the
client library), and labels with a bounded set of values only (no request ids, no free-text
reasons).
"""

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flight_platform.core.monitoring import CHALLENGER, CHAMPION

# Dead letters by why they were refused: a bounded set, the free-text reason is in the document.
INVALID_REQUEST = "invalid_request"  # not JSON, off the contract, oversized, null
SCORING_FAILED = "scoring_failed"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCORE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500)
TARGET_PREFIX = "stream-"


class StreamMetrics:
    """One worker's series, in a registry of its own (several workers may share a test process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.consumed = Counter("flight_stream_records_consumed", "Records polled from the request topic.",
                                registry=registry)
        self.answered = Counter("flight_stream_answers", "Requests answered: answers stored for the first "
                                "time.", registry=registry)
        self.already_answered = Counter(
            "flight_stream_already_answered", "Redelivered requests found answered (after a crash or a "
            "rebalance): the first answer stands.", registry=registry)
        self.dead_lettered = Counter("flight_stream_dead_letters", "Records stored as dead letters, by "
                                     "why.", ["reason"], registry=registry)
        for reason in (INVALID_REQUEST, SCORING_FAILED):
            self.dead_lettered.labels(reason)  # present at 0, so a rate is defined from the start
        self.batch_records = Histogram("flight_stream_batch_records", "Records per polled micro-batch.",
                                       buckets=BATCH_BUCKETS, registry=registry)
        self.score_seconds = Histogram("flight_stream_score_seconds", "Time to score a micro-batch, by "
                                       "the model's role.", ["role"], buckets=SCORE_BUCKETS_S,
                                       registry=registry)
        self.request_to_answer_seconds = Histogram(
            "flight_stream_request_to_answer_seconds", "From a request's timestamp (made by the web "
            "app) to its answer stored in MongoDB.", buckets=LATENCY_BUCKETS_S, registry=registry)
        self.consumer_lag = Gauge("flight_stream_consumer_lag", "Records behind the partition's end "
                                  "(high watermark minus position), per partition this worker holds.",
                                  ["topic", "partition"], registry=registry)
        self.assigned_partitions = Gauge("flight_stream_assigned_partitions", "Request partitions this "
                                         "worker holds (0: in the group but serving none).",
                                         registry=registry)
        self.rebalances = Counter("flight_stream_rebalances", "Rebalances of the consumer group this "
                                  "worker went through.", registry=registry)
        self.shadow_failures = Counter("flight_stream_shadow_failures", "Micro-batches a challenger "
                                       "failed to score (answered without its prediction).",
                                       registry=registry)
        self.model_info = Gauge("flight_stream_model_info", "The model versions this worker scores "
                                "with (1 per version and role).", ["role", "version"],
                                registry=registry)
        self.explanations = Gauge("flight_stream_explanations_enabled", "1 when answers carry each "
                                  "input's contribution, else 0.", registry=registry)

    def serving(self, champion: str, challengers: list[str], explain: bool) -> None:
        self.model_info.labels(CHAMPION, champion).set(1)
        for version in challengers:
            self.model_info.labels(CHALLENGER, version).set(1)
        self.explanations.set(1 if explain else 0)

    def held(self, lag_by_partition: dict[tuple[str, int], int | None]) -> None:
        """The partitions held now and each one's lag (None: not yet known)."""
        self.assigned_partitions.set(len(lag_by_partition))
        self.consumer_lag.clear()  # partitions that moved away leave no stale series
        for (topic, partition), lag in lag_by_partition.items():
            if lag is not None:
                self.consumer_lag.labels(topic, str(partition)).set(lag)


@contextmanager
def served(metrics: StreamMetrics, host: str, targets_dir: Path, labels: dict[str, str]) -> Iterator[str]:
    """Serve `metrics` on `host` (a port the system picks) and announce the target in `targets_dir`
    for as long as the block runs; yields the target's address."""
    server, thread = start_http_server(0, addr=host, registry=metrics.registry)
    address = f"{host}:{server.server_port}"
    targets_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_targets(targets_dir)
    target = targets_dir / f"{TARGET_PREFIX}{socket.gethostname()}-{os.getpid()}.json"
    written = target.with_suffix(".tmp")
    written.write_text(json.dumps([{"targets": [address], "labels": labels}]))
    written.replace(target)  # Prometheus never reads a half-written file
    try:
        yield address
    finally:
        target.unlink(missing_ok=True)
        server.shutdown()
        server.server_close()
        thread.join()


def remove_stale_targets(targets_dir: Path) -> None:
    """Remove the target files of this host's workers whose process is gone (killed, say)."""
    prefix = f"{TARGET_PREFIX}{socket.gethostname()}-"
    for target in targets_dir.glob(f"{prefix}*.json"):
        pid = target.stem.removeprefix(prefix)
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            target.unlink(missing_ok=True)
