"""Fault drills under load on a private stack started as `make run` starts it: each fault is
injected while requests arrive at a steady rate, and the table says what became of them.

    .venv/bin/python -m benchmarks.faults [--rate 200]

Faults: a poison message (30 KB of nested JSON) on the request topic, the stream worker killed with
SIGKILL, a model promoted with the promote_model job (a blue/green roll-out) with one worker and
then, on a second stack, with two workers, one of which is then killed with SIGKILL, the
MongoDB-protocol server stopped for 3 s, the Kafka node stopped and killed with SIGKILL for 3 s,
every process of the stack killed with SIGKILL and the stack started again; on a third stack
over a 3-node Kafka cluster (request topic with 3 replicas, min.insync.replicas 2) under POSTs
through the web app, the leader of a request partition killed with SIGKILL (restarted 10 s
later) and every node restarted in turn. Last, a soak of one stack: tens of thousands of requests
at mixed rates with hostile messages, a worker kill and three roll-outs, then a calm 20
requests/s, whose latency is compared with the same calm load before the soak.

Columns: requests the broker acknowledged, answered, lost (acknowledged, never answered),
duplicate answer documents, sends the broker refused while down (the web app answers those 503),
errors (web answers that were neither OK nor 503), the outage, and seconds from the end of the
outage (the kill, for a kill) until a request sent after it was answered; for the whole-stack
kill, from the Dagster UI being up again (for a roll-out: the promotion -> every worker on the new
version; for a worker loss: the kill -> as many workers serving as before), the longest any
request waited for its answer, and the longest time between two acknowledged sends (a produce
stall). Prints figures; asserts nothing. Goals: serving again within 20 s of a worker crash or a
service restart, within 60 s of the UI being up after a hard kill.
"""

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.private_platform import running_platform
from benchmarks.stream import measure
from flight_platform.settings import free_port
from flight_platform_dev import drills
from flight_platform_dev.drills import DrillResult
from flight_platform_dev.platform import PrivatePlatform

CALM_RATE, CALM_S = 20, 10


def on_second_stack(seed: PrivatePlatform, environment: dict[str, str],
                    run: Callable[[PrivatePlatform], list[DrillResult]]) -> list[DrillResult]:
    """`run` on another stack with `environment`, seeded with the first one's tables and model."""
    scratch = Path(tempfile.mkdtemp(prefix="flight_platform_bench_"))
    try:
        with PrivatePlatform(scratch, seed_from=seed.settings, environment=environment) as platform:
            return run(platform)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def scale_out_drills(seed: PrivatePlatform, rate: float, workers: int = 2) -> list[DrillResult]:
    """A roll-out and the loss of a worker with `workers` stream workers."""
    return on_second_stack(seed, {"FLIGHT_PLATFORM_STREAM_WORKERS": str(workers)}, lambda platform: [
        drills.drill_rollout(platform, rate)[0], drills.drill_worker_loss(platform, rate)])


def cluster_drills(seed: PrivatePlatform, rate: float) -> list[DrillResult]:
    """A partition leader killed, then every node restarted in turn, in a 3-node Kafka cluster."""
    return on_second_stack(seed, {
        "FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS": ",".join(f"127.0.0.1:{free_port()}" for _ in range(3)),
        "FLIGHT_PLATFORM_REQUEST_TOPIC_REPLICATION_FACTOR": "3",
        "FLIGHT_PLATFORM_REQUEST_TOPIC_MIN_INSYNC_REPLICAS": "2",
    }, lambda platform: [drills.drill_leader_kill(platform, rate),
                         drills.drill_rolling_restart(platform, rate)])


def calm_latency_ms(platform: PrivatePlatform) -> tuple[float, float]:
    """p50 and p99 produce -> answer readable of CALM_S seconds at CALM_RATE, every request timed."""
    poller, sent = measure(platform.settings, CALM_RATE * CALM_S, CALM_RATE, sample_every=1)
    p50, p99 = np.percentile(poller.latencies_ms(sent), [50, 99])
    return p50, p99


def soak(platform: PrivatePlatform, rate: float) -> tuple[DrillResult, str]:
    """Mixed rates, hostile messages, a worker kill and three roll-outs against one stack, then a
    calm load; the row, and the calm latency before and after."""
    idle = calm_latency_ms(platform)
    sent = answered = 0
    results = []
    for count, phase_rate in [(6_000, 200), (20_000, 2_000), (10_000, 1_000), (2_000, 50), (20_000, None)]:
        poller, phase_sent = measure(platform.settings, count, phase_rate)
        sent, answered = sent + len(phase_sent), answered + poller.answered()
        results += [drills.drill_poison_message(platform, rate) if phase_rate == 200 else
                    drills.drill_worker_kill(platform, rate) if phase_rate == 50 else
                    drills.drill_rollout(platform, rate)[0]]
    after = calm_latency_ms(platform)
    row = DrillResult("soak: 5 rates, hostile, kill, 3 roll-outs", sent + sum(r.sent for r in results),
                      answered + sum(r.answered for r in results), sum(r.duplicated for r in results),
                      0, 0.0, 0.0, max(r.longest_wait_s for r in results))
    return row, (f"calm {CALM_RATE}/s: p50 {idle[0]:.1f} ms, p99 {idle[1]:.1f} ms before the soak; "
                 f"p50 {after[0]:.1f} ms, p99 {after[1]:.1f} ms in the {CALM_S} s right after it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="steady requests per second")
    rate = parser.parse_args().rate
    with running_platform() as platform:
        results = [
            drills.drill_poison_message(platform, rate),
            drills.drill_worker_kill(platform, rate),
            drills.drill_rollout(platform, rate)[0],
            *scale_out_drills(platform, rate),
            drills.drill_service_restart(platform, "mongo", rate),
            drills.drill_service_restart(platform, "kafka-1", rate),
            drills.drill_service_restart(platform, "kafka-1", rate, kill=True),
            drills.drill_hard_kill(platform, rate),
            *cluster_drills(platform, rate),
        ]
        soaked, calm = soak(platform, rate)
        results.append(soaked)
    print(f"\nFault drills at {rate:,.0f} requests/s offered")
    print(f"{'fault':46} {'sent':>7} {'answered':>8} {'lost':>5} {'dup':>4} {'refused':>7} {'errors':>6} "
          f"{'outage s':>8} {'serving again s':>15} {'longest wait s':>14} {'produce stall s':>15}")
    for r in results:
        print(f"{r.fault:46} {r.sent:7,} {r.answered:8,} {r.lost:5,} {r.duplicated:4,} "
              f"{r.refused:7,} {r.errors:6,} {r.outage_s:8.1f} {r.serving_again_s:15.1f} "
              f"{r.longest_wait_s:14.2f} {r.produce_stall_s:15.2f}")
    print(calm)


if __name__ == "__main__":
    main()
