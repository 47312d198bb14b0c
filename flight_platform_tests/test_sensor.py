"""The stream supervisor, evaluated with Dagster's test utilities against a real (SQLite) instance."""

import time

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from flight_platform.core.model_store import ModelStore
from flight_platform.resources import ModelStoreResource
from flight_platform.streaming.job import (
    CHALLENGERS_TAG,
    MODEL_VERSION_TAG,
    flight_delay_prediction_stream,
)
from flight_platform.streaming.supervisor import (
    BACKOFF_BASE_S,
    CRASH_LOOP_RUN_S,
    prediction_stream_supervisor,
    restart_delay,
)


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path)


def publish(store: ModelStore, version: str) -> None:
    store.pipeline_dir(version).mkdir(parents=True)
    store.promote(version)


def evaluate(instance, store):
    context = build_sensor_context(instance=instance,
                                   resources={"model_store": ModelStoreResource(root=str(store.root))})
    return prediction_stream_supervisor(context)


def stream_run(instance, status: DagsterRunStatus, version: str | None):
    return instance.create_run_for_job(flight_delay_prediction_stream, status=status,
                                       tags={MODEL_VERSION_TAG: version} if version else {})


def test_waits_for_a_model(instance, store):
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and "No model promoted yet" in result.skip_message


def test_launches_when_no_run_is_alive(instance, store):
    publish(store, "v1")
    stream_run(instance, DagsterRunStatus.CANCELED, "v0")  # an old, cleanly stopped run
    result = evaluate(instance, store)
    assert isinstance(result, RunRequest)
    assert result.tags[MODEL_VERSION_TAG] == "v1"
    assert result.run_config["ops"]["serve_prediction_requests"]["config"]["model_version"] == "v1"


@pytest.mark.parametrize("status", [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                                    DagsterRunStatus.STARTED])
def test_never_starts_a_second_run(instance, store, status):
    publish(store, "v1")
    run = stream_run(instance, status, "v1")
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason)
    assert run.run_id in result.skip_message
    assert instance.get_run_by_id(run.run_id).status == status


def test_redeploys_on_a_new_model_version(instance, store):
    publish(store, "v1")
    old = stream_run(instance, DagsterRunStatus.STARTED, "v1")
    publish(store, "v2")

    stopping = evaluate(instance, store)
    assert isinstance(stopping, SkipReason) and "stopping run" in stopping.skip_message
    # The sensor asked Dagster to terminate the run (what the UI's Terminate button does).
    assert instance.get_run_by_id(old.run_id).status == DagsterRunStatus.CANCELING

    still_stopping = evaluate(instance, store)
    assert isinstance(still_stopping, SkipReason) and "CANCELING" in still_stopping.skip_message

    instance.report_run_canceled(instance.get_run_by_id(old.run_id))  # the worker has stopped
    replacement = evaluate(instance, store)
    assert isinstance(replacement, RunRequest) and replacement.tags[MODEL_VERSION_TAG] == "v2"


def test_redeploys_when_the_challengers_change(instance, store):
    publish(store, "v1")
    store.pipeline_dir("v2").mkdir(parents=True)
    store.pipeline_dir("v3").mkdir(parents=True)
    store.add_challenger("v2", keep=2)
    first = evaluate(instance, store)
    assert first.tags == {MODEL_VERSION_TAG: "v1", CHALLENGERS_TAG: "v2"}
    assert first.run_config["ops"]["serve_prediction_requests"]["config"][
        "challenger_versions"] == ["v2"]
    run = instance.create_run_for_job(flight_delay_prediction_stream, status=DagsterRunStatus.STARTED,
                                      tags=first.tags)
    assert isinstance(evaluate(instance, store), SkipReason)  # serving what it should
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

    store.add_challenger("v3", keep=2)
    stopping = evaluate(instance, store)
    assert isinstance(stopping, SkipReason) and "stopping run" in stopping.skip_message
    instance.report_run_canceled(instance.get_run_by_id(run.run_id))
    replacement = evaluate(instance, store)
    assert replacement.tags == {MODEL_VERSION_TAG: "v1", CHALLENGERS_TAG: "v2 v3"}


def test_a_run_still_loading_its_model_is_left_alone(instance, store):
    publish(store, "v2")
    run = stream_run(instance, DagsterRunStatus.STARTED, None)
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and "(loading)" in result.skip_message
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED


def test_backs_off_after_consecutive_failures(instance, store):
    publish(store, "v1")
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and "backing off" in result.skip_message

    now = time.time()
    assert 0 < restart_delay(instance, now) <= BACKOFF_BASE_S
    assert restart_delay(instance, now + BACKOFF_BASE_S + 1) == 0
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    # Three failures in a row: wait 4x the base delay.
    assert restart_delay(instance, now + 2 * BACKOFF_BASE_S) > BACKOFF_BASE_S
    assert restart_delay(instance, now + 4 * BACKOFF_BASE_S + 1) == 0


def failed_after_serving(instance, seconds: float):
    """A stream run that started `seconds` ago and has just failed (e.g. its worker was killed)."""
    run = stream_run(instance, DagsterRunStatus.NOT_STARTED, "v1")
    instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value,
                                               job_name=flight_delay_prediction_stream.name),
                                  run.run_id, timestamp=time.time() - seconds)
    instance.report_run_failed(instance.get_run_by_id(run.run_id))


def test_a_crash_after_serving_a_while_is_replaced_at_once(instance, store):
    publish(store, "v1")
    for _ in range(3):  # an earlier, unrelated crash loop...
        stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    failed_after_serving(instance, CRASH_LOOP_RUN_S + 60)  # ...then a healthy run was killed
    assert restart_delay(instance, time.time()) == 0
    assert isinstance(evaluate(instance, store), RunRequest)


def test_a_run_that_dies_soon_after_starting_is_a_crash_loop(instance, store):
    publish(store, "v1")
    failed_after_serving(instance, CRASH_LOOP_RUN_S / 4)
    assert restart_delay(instance, time.time()) > 0


def test_a_clean_stop_resets_the_backoff(instance, store):
    publish(store, "v1")
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    stream_run(instance, DagsterRunStatus.CANCELED, "v1")
    assert restart_delay(instance, time.time()) == 0
    assert isinstance(evaluate(instance, store), RunRequest)
