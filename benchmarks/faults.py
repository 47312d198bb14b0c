"""Fault drills under load on a private stack started as `make run` starts it: each fault is
injected while requests arrive at a steady rate, and the table says what became of them.

    .venv/bin/python -m benchmarks.faults [--rate 200]

Faults: a poison message (30 KB of nested JSON) on the request topic, the stream worker killed with
SIGKILL, a model promoted with the promote_model job (a blue/green roll-out) with one worker and
then, on a second stack, with two workers, one of which is then killed with SIGKILL, the
MongoDB-protocol server and the broker each stopped for 3 s, and every process of the stack killed
with SIGKILL and the stack started again. Columns: requests the broker acknowledged,
answered, lost (acknowledged, never answered), duplicate answer documents, sends the broker refused
while down (the web app answers those 503), the outage, and seconds from the end of the outage (the
kill, for a kill) until a request sent after it was answered; for the whole-stack kill, from the
Dagster UI being up again (for a roll-out: the promotion -> every worker on the new version; for a
worker loss: the kill -> as many workers serving as before), and the longest any request waited
for its answer. Prints figures; asserts nothing. Goals: serving again within 20 s of a
worker crash or a service restart, within 60 s of the UI being up after a hard kill.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.private_platform import running_platform
from flight_platform.local import drills
from flight_platform.local.drills import PrivatePlatform


def scale_out_drills(seed: PrivatePlatform, rate: float, workers: int = 2) -> list[drills.DrillResult]:
    """A roll-out and the loss of a worker on a second stack with `workers` stream workers, seeded
    with the first one's tables and model."""
    scratch = Path(tempfile.mkdtemp(prefix="flight_platform_bench_"))
    try:
        with PrivatePlatform(scratch, seed_from=seed.settings,
                             environment={"FLIGHT_PLATFORM_STREAM_WORKERS": str(workers)}) as platform:
            return [drills.drill_rollout(platform, rate)[0], drills.drill_worker_loss(platform, rate)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
            drills.drill_service_restart(platform, "kafka", rate),
            drills.drill_hard_kill(platform, rate),
        ]
    print(f"\nFault drills at {rate:,.0f} requests/s offered")
    print(f"{'fault':34} {'sent':>7} {'answered':>8} {'lost':>5} {'dup':>4} {'refused':>7} "
          f"{'outage s':>8} {'serving again s':>15} {'longest wait s':>14}")
    for r in results:
        print(f"{r.fault:34} {r.sent:7,} {r.answered:8,} {r.lost:5,} {r.duplicated:4,} "
              f"{r.refused:7,} {r.outage_s:8.1f} {r.serving_again_s:15.1f} {r.longest_wait_s:14.2f}")


if __name__ == "__main__":
    main()
