"""Faults on a whole running stack, as `make run` runs it (services, `dg dev` with its daemon and
the supervising sensor, gunicorn): a second private platform seeded with this session's model and
routes, hit by the drills of flight_platform_dev.drills under a steady load. Every request the
broker acknowledged is answered once; serving resumes by itself. (How fast is printed by
benchmarks/faults.py, not asserted here.)"""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from dagster import DagsterRunStatus, RunsFilter

from flight_platform.local import services
from flight_platform.local.processes import wait_until
from flight_platform.local.prometheus_server import prometheus_server
from flight_platform.local.stack import cancel_stream_runs
from flight_platform.settings import free_port
from flight_platform.streaming.job import flight_delay_prediction_stream
from flight_platform.streaming.supervisor import SUPERVISOR
from flight_platform_dev import drills
from flight_platform_dev.dagster_runs import run_cli
from flight_platform_dev.load import answered
from flight_platform_dev.metrics import AlertWatch
from flight_platform_dev.platform import RECOVERY_TIMEOUT_S, PrivatePlatform
from web.metrics import STATUS_EXPRESSIONS

pytestmark = [pytest.mark.services, pytest.mark.faults]
RATE = 50  # requests per second: steady, and light enough for two cores shared with everything
NOT_SERVING, LAG_GROWING = "FlightStreamNotServing", "FlightConsumerLagGrowing"


def platform_environment() -> dict[str, str]:
    """A Spark server of its own: the hard kill is a power cut, and the restart starts every
    service again, as `make run` on that machine would. Prometheus scrapes every second: each alert
    holds for a number of scrape intervals, seconds here rather than minutes. A run that served 10 s
    counts as crashed once, not as a crash loop: the worker kill need not wait for one 45 s old."""
    return {"FLIGHT_PLATFORM_SPARK_REMOTE": f"sc://127.0.0.1:{free_port()}",
            "FLIGHT_PLATFORM_EXTERNAL_SERVICES": "",
            "FLIGHT_PLATFORM_PROMETHEUS_SCRAPE_INTERVAL_S": "1",
            "FLIGHT_PLATFORM_STREAM_CRASH_LOOP_RUN_S": "10"}


def stream_runs(platform: PrivatePlatform) -> dict[str, DagsterRunStatus]:
    with platform.instance() as instance:
        return {run.run_id: run.status for run in instance.get_runs(
            RunsFilter(job_name=flight_delay_prediction_stream.name))}


def assert_nothing_lost(result: drills.DrillResult) -> None:
    """Every request the broker acknowledged was answered. (Never twice: an answer's `_id` is its
    request's UUID, and test_stream checks that replayed requests are found already answered.)"""
    assert result.sent > RATE, result
    assert result.lost == 0, result


def test_a_killed_stream_worker_is_replaced_nothing_is_lost_and_the_alert_fires_and_clears(platform):
    before = stream_runs(platform)
    with AlertWatch(prometheus_server(platform.settings).url) as alerts:
        # Active while the stack came up, before Prometheus saw its first worker: resolved since.
        wait_until(lambda: NOT_SERVING not in alerts.now_active and alerts.polled, RECOVERY_TIMEOUT_S,
                   f"{NOT_SERVING} resolved before the drill")
        alerts.periods.clear()
        result = drills.drill_worker_kill(platform, RATE)
        wait_until(lambda: NOT_SERVING not in alerts.now_firing, RECOVERY_TIMEOUT_S,
                   f"{NOT_SERVING} to clear once the replacement serves")
    assert_nothing_lost(result)
    assert alerts.periods.get(NOT_SERVING), f"{NOT_SERVING} never fired: {alerts.periods}"
    print(f"{NOT_SERVING} firing {alerts.periods[NOT_SERVING]} s after the watch began; {result}")
    after = stream_runs(platform)
    (killed,) = [run for run, status in before.items() if status == DagsterRunStatus.STARTED]
    assert after[killed] == DagsterRunStatus.FAILURE
    assert list(after.values()).count(DagsterRunStatus.STARTED) == 1  # its one replacement


@pytest.mark.parametrize(("service", "kill"), [("mongo", False), ("kafka-1", True)],
                         ids=["mongo restarted", "broker killed -9"])
def test_a_service_restarting_under_load_loses_nothing(platform, service, kill):
    # A killed broker: the requests acknowledged but not yet read when it died are on its disk.
    assert_nothing_lost(drills.drill_service_restart(platform, service, RATE, kill=kill))
    assert list(stream_runs(platform).values()).count(DagsterRunStatus.STARTED) == 1


def test_a_hard_killed_stack_serves_again_after_a_restart(platform):
    before = stream_runs(platform)
    result = drills.drill_hard_kill(platform, RATE)
    assert_nothing_lost(result)
    after = stream_runs(platform)
    # The run the dead stack left STARTED was settled at start-up, and a new one serves.
    (abandoned,) = [run for run, status in before.items() if status == DagsterRunStatus.STARTED]
    assert after[abandoned] == DagsterRunStatus.FAILURE
    assert "left STARTED by a stack that stopped without cleaning up" in platform.stack.log()
    assert list(after.values()).count(DagsterRunStatus.STARTED) == 1


def test_the_alerts_fire_while_the_stream_is_stopped_and_clear_once_it_serves(platform):
    """The supervisor off and the stream run terminated while requests arrive: Prometheus fires 'no
    worker serving' and 'lag growing' (the exporter reads the group's lag from the broker, so it
    grows with no worker running); the supervisor on again, both clear and nothing is lost."""
    # The code location as the stack's daemon loads it (workspace.yaml), whose sensor state counts.
    supervisor = ["dagster", "sensor", "-w", "workspace.yaml", SUPERVISOR]
    both = {NOT_SERVING, LAG_GROWING}
    run_cli(*supervisor[:2], "stop", *supervisor[2:], env=platform.env)
    load = platform.load(RATE)
    try:
        with AlertWatch(prometheus_server(platform.settings).url) as alerts:
            cancel_stream_runs(platform.settings)
            try:
                wait_until(lambda: both <= alerts.now_firing, RECOVERY_TIMEOUT_S,
                           f"{both} to fire (fired: {alerts.periods})")
            finally:  # the module's other tests need the stream back, whatever happened
                run_cli(*supervisor[:2], "start", *supervisor[2:], env=platform.env)
            wait_until(lambda: not both & alerts.now_firing, RECOVERY_TIMEOUT_S, f"{both} to clear")
    finally:
        load.stop()
    wait_until(lambda: answered(platform.database, load.ids()) == len(load.ids()), RECOVERY_TIMEOUT_S,
               "every request sent while the stream was stopped to be answered")
    print(f"firing (s after the watch began): {alerts.periods}")


def test_the_status_view_draws_series_prometheus_has(platform):
    url = prometheus_server(platform.settings).url

    def series(expression: str) -> list:
        query = urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as answer:
            return json.load(answer)["data"]["result"]

    load = platform.load(RATE)
    try:  # a rate needs two scrapes of a serving worker within its window
        for expression in STATUS_EXPRESSIONS:
            wait_until(lambda e=expression: series(e), RECOVERY_TIMEOUT_S, f"Prometheus to have {expression}")
    finally:
        load.stop()


def test_with_prometheus_stopped_the_stack_serves_on(platform):
    prometheus = prometheus_server(platform.settings)
    assert services.running_pid(prometheus) is not None, "the stack did not start Prometheus"
    services.stop(prometheus)
    try:
        status, accepted = post_prediction(platform)
        assert status == 200, accepted
        wait_until(lambda: answered(platform.database, [accepted["id"]]), RECOVERY_TIMEOUT_S,
                   "an answer with Prometheus stopped")
    finally:
        services.start(prometheus)


def post_prediction(platform: PrivatePlatform) -> tuple[int, dict]:
    form = {"DepDelay": "5", "Carrier": "DL", "FlightDate": "2013-12-23", "Dest": "ATL",
            "FlightNum": "1519", "Origin": "JFK"}
    url = (f"http://{platform.settings.web_host}:{platform.settings.web_port}"
           f"/flights/delays/predict/classify_realtime")
    request = urllib.request.Request(url, data=json.dumps(form).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_broker_down_gives_503s_then_the_app_recovers_by_itself(platform):
    assert post_prediction(platform)[0] == 200
    (broker,) = services.kafka_nodes(platform.settings)
    services.stop(broker)
    try:
        status, body = post_prediction(platform)
        assert status == 503 and body["status"] == "UNAVAILABLE", body
    finally:
        services.start(broker)
    _, accepted = wait_until(lambda: (answer := post_prediction(platform))[0] == 200 and answer,
                             RECOVERY_TIMEOUT_S, "the web app to accept again")
    wait_until(lambda: answered(platform.database, [accepted["id"]]),
               RECOVERY_TIMEOUT_S, "the stream to answer after the broker restart")

