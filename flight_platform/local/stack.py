"""Run the whole local platform: services, a full materialization, the Dagster UI and the web app.

    python -m flight_platform.local.stack        (what `make run` does)

1. starts Apache Kafka, the MongoDB-protocol server and the Spark Connect server
   (`flight_platform.local.services`),
   and settles the runs a stack that died without stopping (a power cut, kill -9) left unfinished;
2. registers the months the sources hold as partitions and, unless every month and a model are
   already materialized, materializes every asset with Dagster's CLI (`dg launch`, one run over
   all months), so the UI shows the run; `--no-materialize` serves
   what is there. New or changed BTS downloads are the inbox sensor's, once Dagster is up;
3. serves the Dagster UI (`dg dev`, whose daemon runs the sensor that starts the streaming
   job) and the web app under gunicorn, a production WSGI server, and starts the platform's
   metrics exporter and Prometheus (if installed: without it the stack serves unmonitored);
4. on Ctrl-C or SIGTERM, stops all of it, services included.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from flight_platform.batch.sources import flight_months, month_sources
from flight_platform.clients.mongo import DISTANCES
from flight_platform.core.model_store import FLIGHT_DELAY_MODEL, ModelStore
from flight_platform.local import processes, services
from flight_platform.local.postgres import dagster_storage, dagster_yaml
from flight_platform.local.prometheus_server import PrometheusServer, prometheus_server
from flight_platform.local.prometheus_server import executable as prometheus_executable
from flight_platform.settings import REPO_ROOT, Settings, load_settings
from flight_platform.streaming.job import flight_delay_prediction_stream
from flight_platform.streaming.supervisor import ALIVE, FINISHED
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES, ON_TIME_PERFORMANCE

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # for the streaming run to end once canceled


class _Stop(Exception):
    pass


def _raise_stop(signum, _frame):
    raise _Stop(signal.Signals(signum).name)


def start_server(command: list, env: dict) -> subprocess.Popen:
    return processes.start(command, env=env, cwd=REPO_ROOT)


def wait_until_answering(url: str, server: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> None:
    processes.wait_until(lambda: processes.answers(url), timeout, f"{url} to answer", interval=0.5,
                         process=server)


def cancel_stream_runs(settings: Settings) -> None:
    """Terminate the streaming run as the UI's Terminate button does, while the code server that
    launched it is still up: it stores and commits its batch and ends as canceled, not as failed
    (which would make the sensor back off on the next start)."""
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name,
                                            statuses=[DagsterRunStatus.STARTED]))
        for run in runs:
            instance.run_coordinator.cancel_run(run.run_id)
        processes.wait_until(lambda: all(instance.get_run_by_id(run.run_id).status in FINISHED
                                         for run in runs), STOP_TIMEOUT_S,
                             "the streaming run to end", interval=0.5)


def settle_abandoned_runs(settings: Settings) -> list[str]:
    """Mark the runs a dead stack left unfinished as canceled (those being stopped) or failed.

    Called before this stack starts Dagster, so no live process can own them: with their processes
    gone, they would stay STARTED or CANCELING for ever, and the supervisor would wait on them
    instead of launching the stream. Returns one line per run settled."""
    settled = []
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        for run in instance.get_runs(RunsFilter(statuses=ALIVE)):
            reason = (f"{settings.dagster_home}: run {run.run_id} ({run.job_name}) was left "
                      f"{run.status.value} by a stack that stopped without cleaning up")
            instance.report_engine_event(reason, run)
            if run.status == DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run)
            else:
                instance.report_run_failed(run)
            settled.append(reason)
    return settled


def refuse_if_serving(settings: Settings) -> None:
    """A second stack on the same ports would fight the first one over its runs and services."""
    for name, host, port in [("Dagster UI", "127.0.0.1", settings.dagster_port),
                             ("web app", settings.web_host, settings.web_port)]:
        if services.port_in_use(host, port):
            raise RuntimeError(f"the {name} port {host}:{port} is taken: is flight_platform already "
                               f"running? Stop it, or set FLIGHT_PLATFORM_* ports for a second one.")


def dagster_environment(settings: Settings) -> dict[str, str]:
    """The environment for Dagster's commands: DAGSTER_HOME under the data dir, with the project's
    instance settings (dagster.yaml) in it, and this virtualenv as the active one (`dg` warns when
    the project's .venv is not)."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(dagster_yaml(settings))
    return {**os.environ, "DAGSTER_HOME": str(settings.dagster_home), "VIRTUAL_ENV": sys.prefix}


# By the names the assets take (importing the asset modules would load Spark into this process).
MONTHLY_ASSETS = [ON_TIME_PERFORMANCE, FLIGHT_DELAY_FEATURES, DISTANCES]


def register_months(settings: Settings) -> list[str]:
    """Register every month the sources hold as a partition (the inbox sensor registers later
    downloads). Returns all registered months, in partition order."""
    months = month_sources(settings.bts_dir).months
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        known = set(instance.get_dynamic_partitions(flight_months.name))
        instance.add_dynamic_partitions(flight_months.name, [m for m in months if m not in known])
        return instance.get_dynamic_partitions(flight_months.name)


def unmaterialized(settings: Settings, months: list[str]) -> list[str]:
    """What a restart must materialize: the monthly assets' missing months, and the model if none
    is promoted. Empty when everything is there (changed downloads are the inbox sensor's)."""
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        missing = [f"{asset}[{month}]" for asset in MONTHLY_ASSETS
                   for month in sorted(set(months) - instance.get_materialized_partitions(
                       AssetKey(asset)))]
    if ModelStore(settings.model_store_dir).current_version() is None:
        missing.append(FLIGHT_DELAY_MODEL)
    return missing


def materialize_command(months: list[str], assets: str = "*") -> list[str]:
    """Dagster's CLI materializing `assets` (all of them by default) for `months`, as `make run`
    and CI do: one run, one Spark session (every asset has a single-run backfill policy)."""
    return [str(Path(sys.executable).parent / "dg"), "launch", "--assets", assets,
            "--partition-range", f"{months[0]}...{months[-1]}", "-m", "flight_platform.definitions"]


# Chosen with benchmarks/web.py (README): gevent workers took 1.5x (16 clients) to 2.4x (64) the
# POSTs of 2 workers x 4 threads and hold 1,000 long polls, which threads cannot; on two cores 3
# workers did worse than 2 (smaller producer batches), and 1 as well at 16 clients but not at 64.
WEB_WORKERS = 2
WEB_WORKER_CONNECTIONS = 2000  # waiting pages and POSTs in flight, per worker


def web_server_command(settings: Settings) -> list[str]:
    """The web app under gunicorn's gevent workers: a POST waiting for Kafka's acknowledgement and a
    page long polling for its answer park a greenlet, not a thread, so a worker holds thousands, and
    concurrent POSTs share the worker's producer batches."""
    return [str(Path(sys.executable).parent / "gunicorn"),
            "--bind", f"{settings.web_host}:{settings.web_port}", "--worker-class", "gevent",
            "--workers", str(WEB_WORKERS), "--worker-connections", str(WEB_WORKER_CONNECTIONS),
            "--access-logfile", "-", "--config", "python:web.gunicorn_config", "web.app:create_app()"]


def exporter_command() -> list[str]:
    """The platform exporter (flight_platform.monitoring.exporter): the group's lag from Kafka and
    the batch side from the Dagster instance, for Prometheus."""
    return [sys.executable, "-m", "flight_platform.monitoring.exporter"]


def start_prometheus(prometheus: PrometheusServer) -> str:
    """Start the local Prometheus; without it (not installed, turned off, failing) the stack serves
    on unmonitored, and the report says why."""
    if not prometheus.settings.prometheus_port:
        return "off (FLIGHT_PLATFORM_PROMETHEUS_PORT=0)"
    if prometheus_executable() is None:
        return ("not installed: serving without it (Debian: apt-get install prometheus, or make run "
                "as a user who may)")
    try:
        return services.start(prometheus)
    except services.ServiceError as error:
        return f"not started ({error}): serving without it"


def dagster_commands(settings: Settings) -> list[list[str]]:
    """The Dagster UI and the daemon (which runs the sensors that start the streaming job).
    `dg dev` runs both; read-only, the UI is `dagster-webserver --read-only` (it serves every view
    and refuses launches, terminations, sensor switches and wipes) beside `dagster-daemon`, as `dg
    dev` has no such flag. Either way the UI has no login of its own: see README, "Security"."""
    bin_dir = Path(sys.executable).parent
    address = ["-h", "127.0.0.1", "-p", str(settings.dagster_port)]
    # Their own warnings and errors only: sensors, automation and runs report in the UI (a line
    # every few seconds here would bury what needs a person).
    if not settings.dagster_read_only:
        return [[str(bin_dir / "dg"), "dev", "-w", "workspace.yaml", *address, "--log-level", "warning"]]
    return [[str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", *address, "--read-only",
             "--log-level", "warning"],
            [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml", "--log-level", "warning"]]


def run(settings: Settings, materialize: bool = True) -> None:
    refuse_if_serving(settings)
    env = dagster_environment(settings)
    with dagster_storage(settings):  # SQLite files in DAGSTER_HOME (default), or a private PostgreSQL
        serve(settings, env, materialize)


def serve(settings: Settings, env: dict[str, str], materialize: bool) -> None:
    dagster_url = f"http://127.0.0.1:{settings.dagster_port}"
    web_url = f"http://{settings.web_host}:{settings.web_port}"
    servers: list[subprocess.Popen] = []
    dagster: list[subprocess.Popen] = []
    monitoring: list[subprocess.Popen] = []  # not watched: serving goes on without them
    prometheus = prometheus_server(settings)
    try:
        services.up(settings)
        services.check_kafka_logins(settings)
        for line in settle_abandoned_runs(settings):
            print(line, flush=True)
        months = register_months(settings)
        missing = unmaterialized(settings, months) if materialize else []
        if missing:
            print(f"Materializing every asset (about a minute; missing: {', '.join(missing[:5])}"
                  f"{', ...' if len(missing) > 5 else ''})...", flush=True)
            subprocess.run(materialize_command(months), env=env, cwd=REPO_ROOT, check=True)
        elif materialize:
            print(f"Every asset is materialized for {len(months)} months: not materializing again.",
                  flush=True)
        web = start_server(web_server_command(settings), env)
        servers.append(web)
        dagster = [start_server(command, env) for command in dagster_commands(settings)]
        servers += dagster
        wait_until_answering(f"{web_url}/health", web)
        wait_until_answering(f"{dagster_url}/server_info", dagster[0])
        monitoring.append(start_server(exporter_command(), env))
        print(f"prometheus {start_prometheus(prometheus)}", flush=True)
        print(f"\nflight_platform is up:\n"
              f"  Dagster UI  {dagster_url}{' (read-only)' if settings.dagster_read_only else ''}\n"
              f"  Web app     {web_url}/flights/delays/predict_kafka\n"
              + (f"  Prometheus  {prometheus.url} (alerts: {prometheus.url}/alerts)\n"
                 if services.running_pid(prometheus) is not None else "") +
              f"  Kafka {settings.kafka_bootstrap_servers}, MongoDB {settings.mongo_uri}, "
              f"Spark Connect {settings.spark_remote}\n"
              f"The sensor prediction_stream_supervisor starts the streaming job within a minute.\n"
              f"Press Ctrl-C to stop everything.\n", flush=True)
        while all(server.poll() is None for server in servers):
            time.sleep(0.5)
        print("A server exited; stopping the rest.", file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # let the clean-up below finish
            signal.signal(sig, signal.SIG_IGN)
        if dagster:
            try:
                cancel_stream_runs(settings)
            except Exception as error:  # noqa: BLE001 - the SIGTERM below still stops it cleanly
                print(f"Could not terminate the streaming run through Dagster ({error}); "
                      f"stopping it by signal.", file=sys.stderr)
        if killed := processes.stop(*servers, *monitoring):
            print(f"Killed, still running {processes.STOP_TIMEOUT_S:.0f} s after SIGTERM: "
                  f"{'; '.join(killed)}", file=sys.stderr, flush=True)
        if services.running_pid(prometheus) is not None:
            print(f"prometheus {services.stop(prometheus)}", flush=True)
        services.down(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flight_platform.local.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-materialize", action="store_true",
                        help="serve what is already materialized instead of materializing first")
    args = parser.parse_args(argv)
    # Handlers (not "ignore") so that the servers started below get default signal dispositions
    # even when this runs in the background of a non-interactive shell. The servers run in their
    # own process groups: a Ctrl-C reaches only this process, which stops them in order.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        settings = load_settings()
    except ValueError as error:  # settings that contradict each other
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run(settings, materialize=not args.no_materialize)
    except _Stop as stop:
        print(f"Stopped ({stop}).")
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError, services.ServiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
