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
from flight_platform.resources import KafkaResource, ModelStoreResource
from flight_platform.settings import load_settings
from flight_platform.streaming.job import (
    CHALLENGERS_TAG,
    JOINED_TAG,
    MODEL_VERSION_TAG,
    SLOT_TAG,
    flight_delay_prediction_stream,
)
from flight_platform.streaming.supervisor import (
    BACKOFF_BASE_S,
    prediction_stream_supervisor,
    restart_delay,
)

CRASH_LOOP_RUN_S = load_settings({}).stream_crash_loop_run_s  # the setting's default


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path)


def publish(store: ModelStore, version: str) -> None:
    store.pipeline_dir(version).mkdir(parents=True)
    store.promote(version, "set up by the test", probation=False)


def evaluate(instance, store, workers: int = 1):
    kafka = KafkaResource(bootstrap_servers="127.0.0.1:1", request_topic="requests", consumer_group="group",
                          consumer_session_timeout_ms=2000, max_message_bytes=1024,
                          stream_workers=workers)
    context = build_sensor_context(instance=instance, resources={
        "model_store": ModelStoreResource(root=str(store.root)), "kafka": kafka})
    return prediction_stream_supervisor(interval_s=5, crash_loop_run_s=CRASH_LOOP_RUN_S)(context)


def launched(result) -> list[RunRequest]:
    """The runs a tick asked for (none when it skipped)."""
    return [] if isinstance(result, SkipReason) else result.run_requests


def stream_run(instance, status: DagsterRunStatus, version: str | None, slot: int = 0,
               challengers: str = "", joined: bool = False):
    """A stream run as the supervisor launches it (or, without a version, one launched by hand
    that has not tagged itself yet)."""
    tags = {MODEL_VERSION_TAG: version, CHALLENGERS_TAG: challengers, SLOT_TAG: str(slot)} if version else {}
    if joined:
        tags[JOINED_TAG] = str(time.time())
    return instance.create_run_for_job(flight_delay_prediction_stream, status=status, tags=tags)


def start_launched(instance, request: RunRequest, joined: bool):
    """What the daemon and the run do with a RunRequest: the run starts, its consumer joins."""
    return instance.create_run_for_job(
        flight_delay_prediction_stream, status=DagsterRunStatus.STARTED,
        tags={**request.tags, **({JOINED_TAG: str(time.time())} if joined else {})})


def status(instance, run) -> DagsterRunStatus:
    return instance.get_run_by_id(run.run_id).status


def test_waits_for_a_model(instance, store):
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and "No model promoted yet" in result.skip_message


def test_launches_when_no_run_is_alive(instance, store):
    publish(store, "v1")
    stream_run(instance, DagsterRunStatus.CANCELED, "v0")  # an old, cleanly stopped run
    (request,) = launched(evaluate(instance, store))
    assert request.tags == {MODEL_VERSION_TAG: "v1", CHALLENGERS_TAG: "", SLOT_TAG: "0"}
    assert request.run_config["ops"]["serve_prediction_requests"]["config"]["model_version"] == "v1"


@pytest.mark.parametrize("run_status", [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                                        DagsterRunStatus.STARTED])
def test_never_starts_a_second_run_in_a_slot(instance, store, run_status):
    publish(store, "v1")
    run = stream_run(instance, run_status, "v1")
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and run.run_id[:8] in result.skip_message
    assert status(instance, run) == run_status


def test_keeps_one_run_per_slot_for_n_workers(instance, store):
    publish(store, "v1")
    assert [r.tags[SLOT_TAG] for r in launched(evaluate(instance, store, workers=2))] == ["0", "1"]
    stream_run(instance, DagsterRunStatus.STARTED, "v1", slot=1, joined=True)
    assert [r.tags[SLOT_TAG] for r in launched(evaluate(instance, store, workers=2))] == ["0"]


def test_a_lowered_worker_count_stops_the_extra_slot(instance, store):
    publish(store, "v1")
    first = stream_run(instance, DagsterRunStatus.STARTED, "v1", slot=0, joined=True)
    second = stream_run(instance, DagsterRunStatus.STARTED, "v1", slot=1, joined=True)
    assert launched(evaluate(instance, store, workers=1)) == []
    assert (status(instance, first), status(instance, second)) == (
        DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)


def test_rolls_out_a_new_version_blue_green(instance, store):
    publish(store, "v1")
    old = stream_run(instance, DagsterRunStatus.STARTED, "v1", joined=True)
    publish(store, "v2")

    # The replacement starts beside the old run, which keeps serving meanwhile...
    (request,) = launched(evaluate(instance, store))
    assert request.tags[MODEL_VERSION_TAG] == "v2" and request.tags[SLOT_TAG] == "0"
    assert status(instance, old) == DagsterRunStatus.STARTED
    replacement = start_launched(instance, request, joined=False)
    waiting = evaluate(instance, store)
    assert isinstance(waiting, SkipReason) and "to join the group" in waiting.skip_message
    assert status(instance, old) == DagsterRunStatus.STARTED

    # ...until the replacement's consumer has joined the group: then the old one is terminated
    # (what the UI's Terminate button does), and nothing more is launched.
    instance.add_run_tags(replacement.run_id, {JOINED_TAG: str(time.time())})
    assert launched(evaluate(instance, store)) == []
    assert status(instance, old) == DagsterRunStatus.CANCELING
    instance.report_run_canceled(instance.get_run_by_id(old.run_id))
    assert launched(evaluate(instance, store)) == []
    assert status(instance, replacement) == DagsterRunStatus.STARTED


def test_rolls_out_one_slot_at_a_time(instance, store):
    publish(store, "v1")
    olds = [stream_run(instance, DagsterRunStatus.STARTED, "v1", slot=s, joined=True) for s in (0, 1)]
    publish(store, "v2")
    (first,) = launched(evaluate(instance, store, workers=2))
    assert first.tags[SLOT_TAG] == "0"
    start_launched(instance, first, joined=True)
    assert launched(evaluate(instance, store, workers=2)) == []  # slot 1 waits for slot 0
    assert [status(instance, r) for r in olds] == [DagsterRunStatus.CANCELING, DagsterRunStatus.STARTED]
    instance.report_run_canceled(instance.get_run_by_id(olds[0].run_id))
    (second,) = launched(evaluate(instance, store, workers=2))
    assert second.tags[SLOT_TAG] == "1" and second.tags[MODEL_VERSION_TAG] == "v2"


def test_every_stale_run_beside_a_joined_replacement_stops_at_once(instance, store):
    publish(store, "v1")
    stale = [stream_run(instance, DagsterRunStatus.STARTED, "v0", joined=True) for _ in range(2)]
    stream_run(instance, DagsterRunStatus.STARTED, "v1", joined=True)
    evaluate(instance, store)
    assert [status(instance, r) for r in stale] == [DagsterRunStatus.CANCELING] * 2
    evaluate(instance, store)  # still leaving: not asked twice, nothing launched
    assert [status(instance, r) for r in stale] == [DagsterRunStatus.CANCELING] * 2


def test_a_failing_replacement_leaves_the_old_run_serving(instance, store):
    publish(store, "v1")
    old = stream_run(instance, DagsterRunStatus.STARTED, "v1", joined=True)
    publish(store, "v2")
    (request,) = launched(evaluate(instance, store))
    instance.report_run_failed(start_launched(instance, request, joined=False))  # e.g. a bad model
    result = evaluate(instance, store)
    assert isinstance(result, SkipReason) and "backing off" in result.skip_message
    assert status(instance, old) == DagsterRunStatus.STARTED


def test_redeploys_when_the_challengers_change(instance, store):
    publish(store, "v1")
    store.pipeline_dir("v2").mkdir(parents=True)
    store.pipeline_dir("v3").mkdir(parents=True)
    store.add_challenger("v2", keep=2)
    (first,) = launched(evaluate(instance, store))
    assert first.tags[CHALLENGERS_TAG] == "v2"
    assert first.run_config["ops"]["serve_prediction_requests"]["config"][
        "challenger_versions"] == ["v2"]
    run = start_launched(instance, first, joined=True)
    assert launched(evaluate(instance, store)) == []  # serving what it should
    assert status(instance, run) == DagsterRunStatus.STARTED

    store.add_challenger("v3", keep=2)
    (replacement,) = launched(evaluate(instance, store))
    assert (replacement.tags[MODEL_VERSION_TAG], replacement.tags[CHALLENGERS_TAG]) == ("v1", "v2 v3")


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
    assert 0 < restart_delay(instance, now, CRASH_LOOP_RUN_S) <= BACKOFF_BASE_S
    assert restart_delay(instance, now + BACKOFF_BASE_S + 1, CRASH_LOOP_RUN_S) == 0
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    # Three failures in a row: wait 4x the base delay.
    assert restart_delay(instance, now + 2 * BACKOFF_BASE_S, CRASH_LOOP_RUN_S) > BACKOFF_BASE_S
    assert restart_delay(instance, now + 4 * BACKOFF_BASE_S + 1, CRASH_LOOP_RUN_S) == 0


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
    assert restart_delay(instance, time.time(), CRASH_LOOP_RUN_S) == 0
    assert len(launched(evaluate(instance, store))) == 1


def test_a_run_that_dies_soon_after_starting_is_a_crash_loop(instance, store):
    publish(store, "v1")
    failed_after_serving(instance, CRASH_LOOP_RUN_S / 4)
    assert restart_delay(instance, time.time(), CRASH_LOOP_RUN_S) > 0


def test_a_clean_stop_resets_the_backoff(instance, store):
    publish(store, "v1")
    stream_run(instance, DagsterRunStatus.FAILURE, "v1")
    stream_run(instance, DagsterRunStatus.CANCELED, "v1")
    assert restart_delay(instance, time.time(), CRASH_LOOP_RUN_S) == 0
    assert len(launched(evaluate(instance, store))) == 1
