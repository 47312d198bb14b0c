"""Whether the model keeps up with its data: a check on `flight_delay_model` that fails when a month's
features changed and no training has followed within the retrain window, and the sensor that
evaluates it all the time.

The freshness policies (batch.sources) only say how long ago each asset was materialized; a model
retrained yesterday on everything but last week's month would pass them. This check compares the
features' materializations with the model's last one in the instance's event log: any month whose
features were materialized after the last training, longer than `RETRAIN_WINDOW_MINUTES` ago, fails
it. The window is the retrain cron's period plus a training, so a failure means retraining is not
happening (its runs fail, its automation is off, or the daemon is down), not that it is on its way.

The sensor reports the result as a runless evaluation (no run is launched: it reads two queries'
worth of event log), and only when it changes, so the check's history in the UI is its transitions.
The same check also runs with each training and when launched from the UI.
"""

import datetime as dt
import json
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    EventLogRecord,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_check,
    sensor,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from flight_platform.core.model_store import FLIGHT_DELAY_MODEL
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES, MODEL_FRESHNESS_CHECK

CHECK_KEY = AssetCheckKey(AssetKey(FLIGHT_DELAY_MODEL), MODEL_FRESHNESS_CHECK)
WINDOW_SETTING = "FLIGHT_PLATFORM_RETRAIN_WINDOW_MINUTES"
# Months materialized in one backfill are many records; the earliest and which months is all this
# needs, and more than this many months since a training is a failure whatever they are.
MAX_RECORDS_READ = 1000


@dataclass(frozen=True)
class Freshness:
    """The check's result, as both a check in a run and a sensor's runless evaluation report it."""

    passed: bool
    description: str
    metadata: dict
    model_record: EventLogRecord | None
    waiting_months: tuple[str, ...]  # months materialized after the last training

    @property
    def state(self) -> str:
        """What the sensor compares between ticks: the times in the description move every tick."""
        storage_id = self.model_record.storage_id if self.model_record else None
        return json.dumps([self.passed, storage_id, self.waiting_months])

    def evaluation(self) -> AssetCheckEvaluation:
        target = self.model_record and AssetCheckEvaluationTargetMaterializationData(
            storage_id=self.model_record.storage_id, run_id=self.model_record.run_id,
            timestamp=self.model_record.timestamp)
        return AssetCheckEvaluation(asset_key=CHECK_KEY.asset_key, check_name=CHECK_KEY.name,
                                    passed=self.passed, description=self.description,
                                    metadata=self.metadata, target_materialization_data=target)


def _utc(timestamp: float) -> str:
    return f"{dt.datetime.fromtimestamp(timestamp, dt.UTC):%Y-%m-%d %H:%M} UTC"


def _ago(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def model_freshness(instance: DagsterInstance, window: dt.timedelta, now: float) -> Freshness:
    """The model against the features materialized since its last training, at `now`."""
    trainings = instance.fetch_materializations(AssetKey(FLIGHT_DELAY_MODEL), limit=1).records
    model = trainings[0] if trainings else None
    since_training = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(FLIGHT_DELAY_FEATURES),
                           after_storage_id=model.storage_id if model else None),
        limit=MAX_RECORDS_READ, ascending=True).records
    months = tuple(sorted({r.partition_key for r in since_training if r.partition_key}))
    metadata: dict = {"retrain_window_minutes": window.total_seconds() / 60,
                      "months_since_training": MetadataValue.json(list(months))}
    if model:
        trained = model.asset_materialization.metadata
        metadata |= {"last_training": MetadataValue.timestamp(model.timestamp),
                     **{key: trained[key] for key in ("model_version", "promoted", "months")
                        if key in trained}}
        last_training = f"the last training ({_utc(model.timestamp)})"
        nothing_new, since = f"No month's features changed since {last_training}.", f"after {last_training}"
    else:
        nothing_new, since = "No month's features materialized yet.", "and no model is trained yet"
    if not since_training:
        return Freshness(True, nothing_new, metadata, model, months)
    first = since_training[0].timestamp
    metadata["first_landed"] = MetadataValue.timestamp(first)
    names = ", ".join(months[:6]) + (f" and {len(months) - 6} more" if len(months) > 6 else "")
    due = first + window.total_seconds()
    if now < due:
        return Freshness(True, f"{names}: features landed {_ago(now - first)} ago, "
                         f"{since}; a training is due by {_utc(due)} ({WINDOW_SETTING}).",
                         metadata, model, months)
    return Freshness(False, f"{names}: features landed {_ago(now - first)} ago and no training has "
                     f"followed within {_ago(window.total_seconds())} ({WINDOW_SETTING}). Retraining "
                     "is not happening: look at the model's latest runs, the batch_automation "
                     "sensor and the daemon.", metadata, model, months)


def model_freshness_check(window: dt.timedelta) -> AssetChecksDefinition:
    @asset_check(asset=CHECK_KEY.asset_key, name=CHECK_KEY.name, blocking=False,
                 description="Every month whose features changed is in a training within "
                 f"{_ago(window.total_seconds())} ({WINDOW_SETTING}); evaluated all the time by "
                 "the model_freshness sensor.")
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        freshness = model_freshness(context.instance, window, dt.datetime.now(dt.UTC).timestamp())
        return AssetCheckResult(passed=freshness.passed, description=freshness.description,
                                metadata=freshness.metadata)

    return _check


def model_freshness_sensor(window: dt.timedelta, interval_s: int) -> SensorDefinition:
    @sensor(name="model_freshness", minimum_interval_seconds=interval_s,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Evaluates {MODEL_FRESHNESS_CHECK} on {FLIGHT_DELAY_MODEL} without a run, "
            "and reports it when its result changes.")
    def _sensor(context: SensorEvaluationContext):
        freshness = model_freshness(context.instance, window, dt.datetime.now(dt.UTC).timestamp())
        if freshness.state == context.cursor:
            return SkipReason(f"Unchanged: {freshness.description}")
        return SensorResult(asset_events=[freshness.evaluation()], cursor=freshness.state)

    return _sensor
