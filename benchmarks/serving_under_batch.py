"""Serving while batch work runs beside it, on a private stack started as `make run` starts it: the
stream's latency under a steady load, first with nothing else running, then while every asset is
materialized again (ingest, features, distances and a retrained model), as a new month or the
hourly retrain does it on the same box.

    .venv/bin/python -m benchmarks.serving_under_batch [--rate 50] [--idle-seconds 20]

Latency is from a request being made to the stream scoring it (each answer's RequestedAt ->
ScoredAt), for every request sent. FLIGHT_PLATFORM_BATCH_NICENESS=0 in the environment measures
batch and serving at the same CPU priority. Prints figures; asserts nothing. Goal: p99 while the
retrain runs <= 2x the idle p99.
"""

import argparse
import subprocess
import time

import numpy as np

from benchmarks.private_platform import running_platform
from flight_platform.batch.sources import flight_months
from flight_platform.clients.mongo import RESPONSES, find_by_ids
from flight_platform.local.processes import wait_until
from flight_platform.local.stack import materialize_command
from flight_platform.settings import REPO_ROOT
from flight_platform_dev.load import answered
from flight_platform_dev.platform import RECOVERY_TIMEOUT_S


def figures(latencies_ms: list[float]) -> str:
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    return (f"{len(latencies_ms):>5,} requests: p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   "
            f"max {max(latencies_ms):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50, help="steady requests per second")
    parser.add_argument("--idle-seconds", type=float, default=20,
                        help="how long the load runs alone before the materialization starts")
    args = parser.parse_args()
    with running_platform() as platform:
        with platform.instance() as instance:
            months = sorted(instance.get_dynamic_partitions(flight_months.name))
        load = platform.load(args.rate)
        time.sleep(args.idle_seconds)
        started = time.time()
        materialized = subprocess.run(materialize_command(months), env=platform.env, cwd=REPO_ROOT,
                                      capture_output=True, text=True)
        finished = time.time()
        load.stop()
        if materialized.returncode:
            raise RuntimeError(f"the materialization failed:\n{materialized.stderr[-3000:]}")
        ids = load.ids()
        wait_until(lambda: answered(platform.database, ids) == len(ids), RECOVERY_TIMEOUT_S,
                   "every request answered")
        answers = list(find_by_ids(platform.database[RESPONSES], ids,
                                   {"RequestedAt": 1, "ScoredAt": 1}))
    latency = {"idle": [], "during": []}
    for answer in answers:
        requested = answer["RequestedAt"].timestamp()
        window = "idle" if requested < started else "during" if requested <= finished else None
        if window:
            latency[window].append((answer["ScoredAt"] - answer["RequestedAt"]).total_seconds() * 1000)
    print(f"\nStream latency (made -> scored) at {args.rate:,.0f} requests/s, batch niceness "
          f"{platform.settings.batch_niceness}")
    print(f"  idle:                            {figures(latency['idle'])}")
    print(f"  during the materialization ({finished - started:5.1f} s): {figures(latency['during'])}")
    print(f"  p99 during / idle: "
          f"{np.percentile(latency['during'], 99) / np.percentile(latency['idle'], 99):.2f}x")


if __name__ == "__main__":
    main()
