"""The single Dagster entry point, loaded by workspace.yaml and the `dagster` CLI.

`defs` is built lazily (`@definitions`): settings are read when Dagster loads the code location,
not when this module is imported, so tests and tools choose their endpoints first.
"""

import dagster as dg

from flight_platform.batch import distances, ingest, model, training_features
from flight_platform.resources import build_resources
from flight_platform.settings import Settings, load_settings
from flight_platform.streaming.job import flight_delay_prediction_stream
from flight_platform.streaming.supervisor import prediction_stream_supervisor


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
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
        resources=build_resources(settings),
        # Every step of a run in one process: one SparkSession (one JVM) per run, not one per asset.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
