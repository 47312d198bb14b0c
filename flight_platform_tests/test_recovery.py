"""Faults on a whole running stack, as `make run` runs it (services, `dg dev` with its daemon and
the supervising sensor, gunicorn): a second private platform seeded with this session's model and
routes, hit by the drills of flight_platform_dev.drills under a steady load. Every request the
broker acknowledged is answered once; serving resumes by itself. (How fast is printed by
benchmarks/faults.py, not asserted here.)"""

import json
import urllib.error
import urllib.request

import pytest
from dagster import DagsterRunStatus, RunsFilter

from flight_platform.local import services
from flight_platform.local.processes import wait_until
from flight_platform.streaming.job import flight_delay_prediction_stream
from flight_platform_dev import drills
from flight_platform_dev.load import answered
from flight_platform_dev.platform import RECOVERY_TIMEOUT_S, PrivatePlatform

pytestmark = [pytest.mark.services, pytest.mark.faults]
RATE = 50  # requests per second: steady, and light enough for two cores shared with everything


def stream_runs(platform: PrivatePlatform) -> dict[str, DagsterRunStatus]:
    with platform.instance() as instance:
        return {run.run_id: run.status for run in instance.get_runs(
            RunsFilter(job_name=flight_delay_prediction_stream.name))}


def assert_nothing_lost(result: drills.DrillResult) -> None:
    """Every request the broker acknowledged was answered. (Never twice: an answer's `_id` is its
    request's UUID, and test_stream checks that replayed requests are found already answered.)"""
    assert result.sent > RATE, result
    assert result.lost == 0, result


def test_a_killed_stream_worker_is_replaced_and_nothing_is_lost(platform):
    before = stream_runs(platform)
    result = drills.drill_worker_kill(platform, RATE)
    assert_nothing_lost(result)
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

