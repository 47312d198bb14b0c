"""Wall time and peak memory of a full materialization, on private services and a scratch data
dir: `dagster asset materialize --select '*'` exactly as CI and `make run` run it.

    .venv/bin/python -m benchmarks.materialize

Prints the whole run's wall time, each asset's step time (from the Dagster event log) and the peak
resident memory of the process tree (the Dagster process and its Spark JVM), sampled every 100 ms.
Target on 2 cores: the whole graph on 336k rows in <= 60 s. Asserts nothing.
"""

import subprocess
import sys
import threading
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance

from benchmarks.private_platform import private_settings
from flight_platform.local import services
from flight_platform.local.stack import dagster_environment
from flight_platform.settings import REPO_ROOT

PAGE_SIZE = 4096


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of `root_pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * PAGE_SIZE
    total, pending = 0, [root_pid]
    while pending:
        pid = pending.pop()
        total += rss.get(pid, 0)
        pending += children.get(pid, [])
    return total


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


def main() -> None:
    with private_settings() as settings:
        env = dagster_environment(settings)
        try:
            services.up(settings)
            started = time.monotonic()
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
                 "--select", "*", "-m", "flight_platform.definitions"],
                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            memory = PeakMemory(process.pid)
            memory.start()
            _, stderr = process.communicate()
            wall = time.monotonic() - started
            memory.done.set()
            memory.join()
            if process.returncode != 0:
                sys.exit(f"materialization failed:\n{stderr.decode()[-3000:]}")
            with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
                (run,) = instance.get_runs(limit=1)
                steps = step_seconds(instance, run.run_id)
        finally:
            services.down(settings)
    print("\nFull materialization (dagster asset materialize --select '*'), 336,776 rows")
    for step, seconds in steps.items():
        print(f"  {step:28} {seconds:6.1f} s")
    print(f"  {'whole run, wall (CLI)':28} {wall:6.1f} s")
    print(f"  {'peak memory (Dagster + JVM)':28} {memory.peak / 2**30:6.2f} GiB")


if __name__ == "__main__":
    main()
