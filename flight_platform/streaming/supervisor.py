"""The supervisor of the streaming job: exactly one run alive, serving the current model with the
current challengers beside it.

It reads only the Dagster instance and the model store's `current` and `challengers` files (small
files): it never talks to Kafka or Spark, so a tick is cheap and cannot hang on a broker.

Model roll-out is stop-then-start: a run serving another champion or other challengers is
terminated (it finishes and commits its batch in hand), and the next tick after it has stopped
launches the new set.
Requests sent in between wait in Kafka, so none is lost, and every answer is stamped with the
version that really produced it. The cost is a gap of roughly one tick plus a run start.
"""

import time

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from flight_platform.resources import ModelStoreResource
from flight_platform.streaming.job import (
    CHALLENGERS_TAG,
    MODEL_VERSION_TAG,
    PredictionStreamConfig,
    flight_delay_prediction_stream,
)

ALIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
         DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 600.0
# A run that failed sooner than this after starting is part of a crash loop (a bad model, a missing
# service); one that served longer crashed once and is replaced at once.
CRASH_LOOP_RUN_S = 45.0


def crash_looping(record, now: float) -> bool:
    """Whether a finished run failed soon after it started (a run that never started counts)."""
    if record.dagster_run.status != DagsterRunStatus.FAILURE:
        return False
    started = record.start_time or record.create_timestamp.timestamp()
    return (record.end_time or now) - started < CRASH_LOOP_RUN_S


def restart_delay(instance: DagsterInstance, now: float) -> float:
    """Seconds still to wait before relaunching: doubling per consecutive crash-looping run, from
    BACKOFF_BASE_S up to BACKOFF_MAX_S; zero when the last run stopped cleanly or had served a
    while before it failed (a crash, not a loop: serving resumes at once)."""
    finished = instance.get_run_records(
        RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=FINISHED), limit=10)
    failures = 0
    for record in finished:
        if not crash_looping(record, now):
            break
        failures += 1
    if not failures:
        return 0.0
    wait = min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S)
    last_failed_at = finished[0].end_time or finished[0].update_timestamp.timestamp()
    return max(0.0, last_failed_at + wait - now)


@sensor(
    job=flight_delay_prediction_stream,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,  # a tick reads a small file and the run table: cheap
    description="Keeps one flight_delay_prediction_stream run alive on the current model version "
    "and challengers: launches one when none is alive, redeploys when a new version is promoted or "
    "the challengers change, and backs off only while runs keep failing soon after they start.",
)
def prediction_stream_supervisor(context: SensorEvaluationContext,
                                 model_store: ModelStoreResource):
    store = model_store.store()
    current = store.current_version()
    if current is None:
        return SkipReason("No model promoted yet: materialize flight_delay_model.")
    challengers = " ".join(store.challengers())

    instance = context.instance
    alive = instance.get_runs(
        RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=ALIVE), limit=1)
    if alive:
        run = alive[0]
        serving = run.tags.get(MODEL_VERSION_TAG)
        shadowing = run.tags.get(CHALLENGERS_TAG, "")
        if run.status == DagsterRunStatus.STARTED and serving is not None and (
                (serving, shadowing) != (current, challengers)):
            instance.run_coordinator.cancel_run(run.run_id)
            return SkipReason(f"Model {current} with challengers [{challengers}] is to serve: "
                              f"stopping run {run.run_id} (serving {serving} with [{shadowing}]); "
                              f"its replacement starts once it has stopped.")
        return SkipReason(f"Run {run.run_id} is {run.status.value}, serving model "
                          f"{serving or '(loading)'}.")

    delay = restart_delay(instance, time.time())
    if delay:
        return SkipReason(f"The last runs failed; backing off {delay:.0f}s before relaunching.")
    return RunRequest(
        run_config=RunConfig(ops={"serve_prediction_requests": PredictionStreamConfig(
            model_version=current, challenger_versions=challengers.split())}),
        tags={MODEL_VERSION_TAG: current, CHALLENGERS_TAG: challengers},
    )
