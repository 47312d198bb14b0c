"""A private platform for the benchmarks: free ports and a scratch data dir, so a running
`make run` stack and its data are left alone. Each benchmark starts what it measures."""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pymongo import MongoClient

from flight_platform.clients.kafka import create_producer
from flight_platform.clients.mongo import DISTANCES, RESPONSES
from flight_platform.core.contract import PredictionRequest
from flight_platform.settings import REPO_ROOT, Settings, load_settings, private_environment

STACK_START_TIMEOUT_S = 600


@contextmanager
def private_settings() -> Iterator[Settings]:
    scratch = Path(tempfile.mkdtemp(prefix="flight_platform_bench_"))
    os.environ.update(private_environment(scratch))
    try:
        yield load_settings()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def running_stack() -> Iterator[Settings]:
    """`python -m flight_platform.local.stack` as `make run` starts it (services, materialization, gunicorn,
    `dagster dev` whose sensor launches the streaming run), until the stream answers a request."""
    with private_settings() as settings:
        log_path = settings.data_dir / "stack.log"
        print(f"Starting a private stack (log: {log_path}); this takes a minute or two...",
              file=sys.stderr, flush=True)
        with open(log_path, "wb") as log:
            stack = subprocess.Popen([sys.executable, "-m", "flight_platform.local.stack"], cwd=REPO_ROOT,
                                     stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STACK_START_TIMEOUT_S
            while b"flight_platform is up" not in log_path.read_bytes():
                if stack.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not come up; see {log_path}:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                time.sleep(1)
            wait_until_streaming(settings, deadline)
            yield settings
        finally:
            stack.send_signal(signal.SIGTERM)
            stack.wait(120)


def wait_until_streaming(settings: Settings, deadline: float) -> None:
    request = request_factory(settings)()
    producer = create_producer(settings.kafka_bootstrap_servers)
    producer.send(settings.request_topic, request.to_message()).get(10)
    producer.close()
    with MongoClient(settings.mongo_uri) as mongo:
        while not mongo[settings.mongo_database][RESPONSES].find_one({"_id": request.UUID}):
            if time.monotonic() > deadline:
                raise RuntimeError("the streaming job did not answer")
            time.sleep(0.5)


def request_factory(settings: Settings, seed: int = 1) -> Callable[[], PredictionRequest]:
    """Makes requests for real routes (from `origin_dest_distances`) on random 2013 dates, each
    stamped when it is made."""
    with MongoClient(settings.mongo_uri) as mongo:
        routes = list(mongo[settings.mongo_database][DISTANCES].find({}, {"_id": 0}))
    rng = random.Random(seed)

    def make() -> PredictionRequest:
        route = rng.choice(routes)
        return PredictionRequest.create(
            Carrier=rng.choice(route["Carriers"]),
            FlightDate=f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            FlightNum=str(rng.randint(1, 5000)), Origin=route["Origin"], Dest=route["Dest"],
            DepDelay=float(rng.randint(-15, 180)), Distance=route["Distance"])

    return make


def percentiles(values_ms: list[float]) -> str:
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   p99 {p99:7.1f} ms   max {max(values_ms):7.1f} ms"
