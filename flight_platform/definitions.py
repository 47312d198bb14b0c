"""The single Dagster entry point: `defs`, loaded by workspace.yaml and the `dagster` CLI."""

from dagster import Definitions, in_process_executor

from flight_platform.assets import distances, ingest, model, training_features
from flight_platform.jobs import flight_delay_prediction_stream
from flight_platform.resources import build_resources
from flight_platform.sensors import prediction_stream_supervisor
from flight_platform.settings import load_settings

defs = Definitions(
    assets=[
        ingest.on_time_performance,
        distances.origin_dest_distances,
        training_features.flight_delay_features,
        model.flight_delay_model,
    ],
    asset_checks=[
        ingest.on_time_performance_not_null,
        training_features.day_of_week_matches_feature_code,
        distances.one_document_per_route,
        training_features.flight_delay_features_not_null,
    ],
    jobs=[flight_delay_prediction_stream],
    sensors=[prediction_stream_supervisor],
    resources=build_resources(load_settings()),
    # Every step of a run in one process: one SparkSession (one JVM) per run, not one per asset.
    executor=in_process_executor,
)
