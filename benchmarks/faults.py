"""Fault drills under load on a private stack started as `make run` starts it: each fault is
injected while requests arrive at a steady rate, and the table says what became of them.

    .venv/bin/python -m benchmarks.faults [--rate 200]

Faults: a poison message (30 KB of nested JSON) on the request topic, the stream worker killed with
SIGKILL, the MongoDB-protocol server and the broker each stopped for 3 s, and every process of the
stack killed with SIGKILL and the stack started again. Columns: requests the broker acknowledged,
answered, lost (acknowledged, never answered), duplicate answer documents, sends the broker refused
while down (the web app answers those 503), the outage, and seconds from the end of the outage (the
kill, for a kill) until a request sent after it was answered; for the whole-stack kill, from the
Dagster UI being up again. Prints figures; asserts nothing. Goals: serving again within 20 s of a
worker crash or a service restart, within 60 s of the UI being up after a hard kill.
"""

import argparse

from benchmarks.private_platform import running_platform
from flight_platform.local import drills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="steady requests per second")
    rate = parser.parse_args().rate
    with running_platform() as platform:
        results = [
            drills.drill_poison_message(platform, rate),
            drills.drill_worker_kill(platform, rate),
            drills.drill_service_restart(platform, "mongo", rate),
            drills.drill_service_restart(platform, "kafka", rate),
            drills.drill_hard_kill(platform, rate),
        ]
    print(f"\nFault drills at {rate:,.0f} requests/s offered")
    print(f"{'fault':34} {'sent':>7} {'answered':>8} {'lost':>5} {'dup':>4} {'refused':>7} "
          f"{'outage s':>8} {'serving again s':>15}")
    for r in results:
        print(f"{r.fault:34} {r.sent:7,} {r.answered:8,} {r.lost:5,} {r.duplicated:4,} "
              f"{r.refused:7,} {r.outage_s:8.1f} {r.serving_again_s:15.1f}")


if __name__ == "__main__":
    main()
