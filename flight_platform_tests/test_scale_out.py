"""Two stream workers in one consumer group, on a whole private stack as `make run` runs it with
FLIGHT_PLATFORM_STREAM_WORKERS=2: they share the request topic's partitions, a promotion is rolled
out blue/green without leaving the topic unconsumed, and losing one worker loses nothing. (The box
has two cores: these assert correctness, not speed-up; benchmarks/faults.py prints the timings.)"""

import json
import re

import pytest
from dagster import DagsterInstance, RunsFilter

from flight_platform.clients.kafka import connection, partition_count
from flight_platform.clients.security import Role
from flight_platform.local.processes import wait_until
from flight_platform.streaming.job import (
    JOINED_TAG,
    MODEL_VERSION_TAG,
    SLOT_TAG,
    WORKER_TAG,
    flight_delay_prediction_stream,
)
from flight_platform_dev import drills
from flight_platform_dev.platform import serving_run, serving_runs

pytestmark = [pytest.mark.services, pytest.mark.faults]
RATE = 20  # requests per second
WORKERS = 2
ASSIGNED = re.compile(r"assigned partitions (\[[0-9, ]*\]|none)")


def platform_environment() -> dict[str, str]:
    """Two workers. The worker lost may have served only seconds since the roll-out before it:
    counted as crashed once (not as a crash loop, relaunched after a backoff) once it served 5 s."""
    return {"FLIGHT_PLATFORM_STREAM_WORKERS": str(WORKERS), "FLIGHT_PLATFORM_STREAM_CRASH_LOOP_RUN_S": "5"}


def assignments(instance: DagsterInstance, run_id: str) -> list[set[int]]:
    """The partitions the run's consumer was given at each (re)join of the group, in order."""
    found = [ASSIGNED.search(entry.user_message) for entry in instance.all_logs(run_id)]
    return [set() if m.group(1) == "none" else set(json.loads(m.group(1))) for m in found if m]


def stream_runs(instance: DagsterInstance, **tags: str) -> list:
    """The stream runs with these tags, oldest first."""
    runs = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name))
    return [run for run in reversed(runs) if all(run.tags.get(k) == v for k, v in tags.items())]


def test_the_workers_share_the_partitions_of_one_group(platform):
    settings = platform.settings
    assert partition_count(connection(settings, Role.STREAM), settings.request_topic) == (
        settings.request_topic_partitions)
    with platform.instance() as instance:
        def shared() -> bool:
            serving = serving_runs(instance)
            latest = [assignments(instance, run.run_id)[-1:] for run in serving]
            if len(serving) != WORKERS or not all(latest):
                return False
            held = [partitions[0] for partitions in latest]
            return set().union(*held) == set(range(settings.request_topic_partitions)) and (
                sum(map(len, held)) == settings.request_topic_partitions)

        wait_until(shared, 120, "two workers holding every partition once between them")
        assert sorted(run.tags[SLOT_TAG] for run in serving_runs(instance)) == ["0", "1"]
        assert len({run.tags[WORKER_TAG] for run in serving_runs(instance)}) == WORKERS


def test_promote_model_rolls_out_blue_green_losing_nothing(platform, capsys):
    with platform.instance() as instance:
        previous = serving_run(instance).tags[MODEL_VERSION_TAG]
        result, version = drills.drill_rollout(platform, RATE)
        with capsys.disabled():
            print(f"\nroll-out: {result}")
        assert result.sent > 0 and result.lost == 0 and result.duplicated == 0, result
        assert platform.database["flight_delay_classification_response"].find_one(
            {"ModelVersion": version}) is not None
        old = {run.tags[SLOT_TAG]: instance.get_run_record_by_id(run.run_id)
               for run in stream_runs(instance, **{MODEL_VERSION_TAG: previous}) if SLOT_TAG in run.tags
               and run.tags.get(JOINED_TAG)}
        new = {run.tags[SLOT_TAG]: run for run in stream_runs(instance, **{MODEL_VERSION_TAG: version})}
        assert sorted(new) == ["0", "1"]
        for slot, replacement in new.items():
            # Each old run stopped only after its replacement had joined the group...
            assert old[slot].end_time >= float(replacement.tags[JOINED_TAG]), slot
        # ...and the second slot was replaced only after the first slot's old run had stopped.
        second = instance.get_run_record_by_id(new["1"].run_id)
        assert second.create_timestamp.timestamp() >= old["0"].end_time - 1


def test_losing_a_worker_loses_nothing_and_the_supervisor_restores_it(platform, capsys):
    with platform.instance() as instance:
        result = drills.drill_worker_loss(platform, RATE)
        with capsys.disabled():
            print(f"\nworker loss: {result}")
        assert result.sent > 0 and result.lost == 0 and result.duplicated == 0, result
        assert len(serving_runs(instance)) == WORKERS
