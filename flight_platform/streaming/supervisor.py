"""The supervisor of the streaming job: N runs alive in one consumer group (N =
FLIGHT_PLATFORM_STREAM_WORKERS), each in its own slot, all serving the current model with the current
challengers beside it.

It reads only the Dagster instance and the model store's `current` and `challengers` files (small
files): it never talks to Kafka or Spark, so a tick is cheap and cannot hang on a broker.

Roll-out is blue/green per slot, one slot at a time: when the champion or the challengers change,
a replacement run is launched into the slot beside the old one, and the old one is terminated only
once the replacement's consumer has joined the group (the JOINED_TAG it sets). The old run
finishes and commits its batch in hand, and its partitions move to the members that stay, so the
topic is never without a consumer and nothing waits for a run start. Every answer is stamped
with the version that really produced it. A replacement that keeps failing leaves the old run
serving (and is relaunched with the crash-loop backoff).
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from flight_platform.resources import KafkaResource, ModelStoreResource
from flight_platform.streaming.job import (
    CHALLENGERS_TAG,
    JOINED_TAG,
    MODEL_VERSION_TAG,
    SLOT_TAG,
    PredictionStreamConfig,
    flight_delay_prediction_stream,
)

ALIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
         DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 600.0


def crash_looping(record, now: float, crash_loop_run_s: float) -> bool:
    """Whether a finished run failed within `crash_loop_run_s` of starting (a run that never
    started counts): a crash loop (a bad model, a missing service), where one that served longer
    crashed once."""
    if record.dagster_run.status != DagsterRunStatus.FAILURE:
        return False
    started = record.start_time or record.create_timestamp.timestamp()
    return (record.end_time or now) - started < crash_loop_run_s


def restart_delay(instance: DagsterInstance, now: float, crash_loop_run_s: float) -> float:
    """Seconds still to wait before relaunching: doubling per consecutive crash-looping run, from
    BACKOFF_BASE_S up to BACKOFF_MAX_S; zero when the last run stopped cleanly or had served a
    while before it failed (a crash, not a loop: serving resumes at once)."""
    finished = instance.get_run_records(
        RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=FINISHED), limit=10)
    failures = 0
    for record in finished:
        if not crash_looping(record, now, crash_loop_run_s):
            break
        failures += 1
    if not failures:
        return 0.0
    wait = min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S)
    last_failed_at = finished[0].end_time or finished[0].update_timestamp.timestamp()
    return max(0.0, last_failed_at + wait - now)


@dataclass
class Plan:
    """What one tick does: the slots to launch a run into, the runs to stop, and why."""

    launch: list[int] = field(default_factory=list)
    stop: list[DagsterRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan(alive: list[DagsterRun], serving: tuple[str, str], workers: int) -> Plan:
    """Decide, from the alive stream runs, how to reach `workers` runs serving `serving`
    (champion, space-separated challengers). A run without a model tag yet (launched by hand,
    still loading) is left alone and holds its slot."""
    result = Plan()
    slots: dict[int, list[DagsterRun]] = defaultdict(list)
    for run in alive:
        slots[int(run.tags.get(SLOT_TAG, "0"))].append(run)

    def describe(run: DagsterRun) -> str:
        return (f"run {run.run_id[:8]} ({run.status.value}, model "
                f"{run.tags.get(MODEL_VERSION_TAG, '(loading)')} [{run.tags.get(CHALLENGERS_TAG, '')}])")

    to_replace = []
    rolling = False
    for slot in range(workers):
        runs = slots.get(slot, [])
        current = [r for r in runs if MODEL_VERSION_TAG not in r.tags or (
            r.tags[MODEL_VERSION_TAG], r.tags.get(CHALLENGERS_TAG, "")) == serving]
        stale = [r for r in runs if r not in current]
        if not runs:
            result.launch.append(slot)
            result.notes.append(f"slot {slot}: empty, launching")
        elif not stale:
            result.notes.append(f"slot {slot}: {describe(runs[0])}")
        elif not current:
            to_replace.append(slot)
        else:
            rolling = True
            if any(r.status == DagsterRunStatus.STARTED and JOINED_TAG in r.tags for r in current):
                result.stop += [r for r in stale if r.status != DagsterRunStatus.CANCELING]
                result.notes.append(f"slot {slot}: replacement joined the group, stopping "
                                    f"{', '.join(describe(r) for r in stale)}")
            else:
                result.notes.append(f"slot {slot}: waiting for the replacement "
                                    f"{describe(current[0])} to join the group")
    for slot in [s for s in slots if s >= workers]:  # the setting was lowered
        result.stop += [r for r in slots[slot] if r.status != DagsterRunStatus.CANCELING]
        result.notes.append(f"slot {slot}: not wanted with {workers} workers, stopping it")
    if to_replace and not rolling:  # one slot at a time: the others keep serving meanwhile
        slot = to_replace.pop(0)
        result.launch.append(slot)
        result.notes.append(f"slot {slot}: launching a replacement beside "
                            f"{', '.join(describe(r) for r in slots[slot])}")
    result.notes += [f"slot {slot}: to be replaced after the one being rolled out" for slot in to_replace]
    return result


SUPERVISOR = "prediction_stream_supervisor"


def prediction_stream_supervisor(interval_s: int, crash_loop_run_s: float) -> SensorDefinition:
    """The supervisor, ticking every `interval_s` (FLIGHT_PLATFORM_STREAM_SUPERVISOR_INTERVAL_S): a
    tick reads two small files and the run table, so it is cheap; a roll-out waits for two ticks
    (launch the replacement, then stop the old run once the replacement has joined). Runs failing
    within `crash_loop_run_s` of starting (FLIGHT_PLATFORM_STREAM_CRASH_LOOP_RUN_S) are a crash loop,
    relaunched with backoff."""
    def supervise(context: SensorEvaluationContext, model_store: ModelStoreResource,
                  kafka: KafkaResource):
        return supervise_stream(context, model_store, kafka, crash_loop_run_s)

    return sensor(
        name=SUPERVISOR,
        job=flight_delay_prediction_stream,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Keeps FLIGHT_PLATFORM_STREAM_WORKERS flight_delay_prediction_stream runs alive in "
        "one consumer group, on the current model version and challengers: launches into empty slots, "
        "rolls a new version out blue/green one slot at a time, and backs off only while runs keep "
        "failing soon after they start.",
    )(supervise)


def supervise_stream(context: SensorEvaluationContext, model_store: ModelStoreResource,
                     kafka: KafkaResource, crash_loop_run_s: float):
    store = model_store.store()
    current = store.current_version()
    if current is None:
        return SkipReason("No model promoted yet: materialize flight_delay_model.")
    challengers = " ".join(store.challengers())

    instance = context.instance
    alive = list(instance.get_runs(
        RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=ALIVE)))
    decided = plan(alive, (current, challengers), kafka.stream_workers)
    for run in decided.stop:
        instance.run_coordinator.cancel_run(run.run_id)
    notes = "; ".join(decided.notes)
    if not decided.launch:
        return SkipReason(notes)
    delay = restart_delay(instance, time.time(), crash_loop_run_s)
    if delay:
        return SkipReason(f"The last runs failed; backing off {delay:.0f}s before relaunching. {notes}")
    context.log.info(notes)
    return SensorResult(run_requests=[
        RunRequest(
            run_config=RunConfig(ops={"serve_prediction_requests": PredictionStreamConfig(
                model_version=current, challenger_versions=challengers.split())}),
            tags={MODEL_VERSION_TAG: current, CHALLENGERS_TAG: challengers, SLOT_TAG: str(slot)},
        ) for slot in decided.launch])
