"""The single Dagster entry point, loaded by workspace.yaml and Dagster's CLI (`dg`).

`defs` is built lazily (`@definitions`): settings are read when Dagster loads the code location,
not when this module is imported, so tests and tools choose their endpoints first.
"""

import datetime as dt

import dagster as dg

from flight_platform.batch import (
    distances,
    drift,
    freshness,
    ingest,
    model,
    outcomes,
    training_features,
)
from flight_platform.batch.inbox import bts_inbox_sensor
from flight_platform.resources import build_resources
from flight_platform.settings import Settings, load_settings
from flight_platform.streaming.job import PREDICTION_REQUESTS, flight_delay_prediction_stream
from flight_platform.streaming.model_roles import manage_challengers, promote_model
from flight_platform.streaming.supervisor import prediction_stream_supervisor


def build_definitions(settings: Settings) -> dg.Definitions:
    # Evaluates the assets' automation conditions: a month's features and distances follow its
    # on-time data, and the model retrains on new months (see batch.model.retraining_condition).
    automation = dg.AutomationConditionSensorDefinition(
        "batch_automation", target=dg.AssetSelection.all(),
        minimum_interval_seconds=settings.batch_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING)
    retrained_model = model.flight_delay_model.map_asset_specs(
        lambda spec: spec.replace_attributes(
            automation_condition=model.retraining_condition(settings.retrain_cron)))
    retrain_window = dt.timedelta(minutes=settings.retrain_window_minutes)
    return dg.Definitions(
        assets=[
            ingest.on_time_performance,
            distances.origin_dest_distances,
            training_features.flight_delay_features,
            retrained_model,
            outcomes.prediction_outcomes,
            PREDICTION_REQUESTS,
        ],
        asset_checks=[
            drift.drift_check(settings.drift_psi_threshold),
            freshness.model_freshness_check(retrain_window),
        ],
        jobs=[flight_delay_prediction_stream, promote_model, manage_challengers],
        sensors=[prediction_stream_supervisor(settings.stream_supervisor_interval_s,
                                              settings.stream_crash_loop_run_s),
                 bts_inbox_sensor(settings.batch_sensor_interval_s),
                 automation,
                 freshness.model_freshness_sensor(retrain_window, settings.batch_sensor_interval_s)],
        resources=build_resources(settings),
        # Every step of a run in one process: one Spark Connect session per run, not one per asset.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
