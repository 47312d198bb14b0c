"""Live accuracy and drift: the answers the stream stored, joined with what the flights then did.

`prediction_outcomes` follows a month's on-time data: when it lands (or is replaced), every answer
stored for a flight of that month is joined with the flight's actual arrival delay bucket, and
each model version (the champion that served the answer and every challenger scored in its
shadow) is measured on it. Answers stored after that are taken in by materializing the month
again (on demand). Its drift check compares the requests served with what the model trained on.

No Spark: a month of flights or answers is a few MB, read with pyarrow, and the answers come
straight from MongoDB. The charts are drawn by `outcome_charts`.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
)

from flight_platform.batch.ingest import on_time_performance
from flight_platform.batch.sources import MONTH_COLUMN, MONTHLY, flight_months
from flight_platform.clients.mongo import RESPONSES
from flight_platform.core import monitoring
from flight_platform.core.features import (
    ARRIVAL_DELAY_LABELS,
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
)
from flight_platform.core.model_store import ModelStore
from flight_platform.resources import ModelStoreResource, MongoResource, WarehouseResource

OUTCOMES = "prediction_outcomes"
DRIFT_CHECK = "served_features_within_drift_threshold"
# One day has one DayOfYear and a month a dozen DayOfMonth values: their distribution in a
# window of requests says which days were asked about, not that the population moved.
CALENDAR_FEATURES = ["DayOfMonth", "DayOfWeek", "DayOfYear"]
DRIFT_NUMERIC = [feature for feature in NUMERIC_FEATURES if feature not in CALENDAR_FEATURES]
# Below this many requests, sampling noise alone puts some feature's PSI near 0.2 (resampling the
# 2013 flights: 99th percentile of the largest of the six 0.20 at 200 requests, 0.14 at 300).
MIN_SERVED_REQUESTS = 300

OUTCOMES_ARROW_SCHEMA = pa.schema([
    ("UUID", pa.string()), ("FlightDate", pa.date32()), ("Carrier", pa.string()),
    ("FlightNum", pa.string()), ("Origin", pa.string()), ("Dest", pa.string()),
    ("DepDelay", pa.float64()), ("Distance", pa.float64()), ("Route", pa.string()),
    ("ModelVersion", pa.string()), ("Role", pa.string()), ("Prediction", pa.int32()),
    ("Probabilities", pa.list_(pa.float64())),  # by bucket
    ("ArrDelay", pa.float64()), ("ActualBucket", pa.int32()), ("Outcome", pa.string()),
])


def read_arrow_months(path: str, months: list[str], columns: list[str]) -> pd.DataFrame:
    """`columns` of the rows of `months` of the monthly Parquet table at `path`, read with pyarrow
    (only those months' directories)."""
    return pq.read_table(path, columns=columns, filters=[(MONTH_COLUMN, "in", months)]).to_pandas()


def read_answers(mongo: MongoResource, months: list[str]) -> list[dict]:
    """Every stored answer for a flight of `months`. A scan: an index on FlightDate would slow every
    insert of the stream (a second unique index cost it 3x), to save a monthly batch a few seconds."""
    dates = [{"FlightDate": {"$gte": f"{month}-01", "$lte": f"{month}-31"}} for month in months]
    fields = [*monitoring.REQUEST_COLUMNS, "ModelVersion", "Prediction", "Probabilities",
              "Explanation.Features", "Explanation.Contributions", "Shadow"]
    return list(mongo.get_database()[RESPONSES].find({"$or": dates}, dict.fromkeys(fields, 1)))


def write_month(rows: pd.DataFrame, path: str, month: str) -> None:
    """Replace the month's directory with `rows` (a month without answers gets an empty file, so
    a reader sees it was evaluated)."""
    target = Path(path) / f"{MONTH_COLUMN}={month}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(rows, schema=OUTCOMES_ARROW_SCHEMA, preserve_index=False),
                   target / "part-00000.parquet")


def offline_accuracy(store: ModelStore, version: str) -> float:
    """The held-out accuracy in the version's model.json; NaN (an empty cell) once the version is
    pruned from the store."""
    try:
        return store.read_info(version)["accuracy"]
    except FileNotFoundError:
        return float("nan")


def _cell(value):
    """A table cell: NumPy scalars as Python ones, NaN (nothing to measure) as empty."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), 4)
    return value.item() if isinstance(value, np.generic) else value


def frame_table(frame: pd.DataFrame) -> MetadataValue:
    """A frame as a Dagster table, its columns typed (the UI aligns and sorts by type)."""
    types = {column: "int" if pd.api.types.is_integer_dtype(dtype)
             else "float" if pd.api.types.is_float_dtype(dtype) else "string"
             for column, dtype in frame.dtypes.items()}
    return MetadataValue.table(
        [TableRecord({column: _cell(value) for column, value in row.items()})
         for row in frame.to_dict("records")],
        schema=TableSchema([TableColumn(column, kind) for column, kind in types.items()]))


def confusion_frame(matrices: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame([
        {"ModelVersion": version, "Actual": f"{bucket} {label}",
         **{f"Predicted {j}": int(count) for j, count in enumerate(matrix[bucket])}}
        for version, matrix in matrices.items()
        for bucket, label in enumerate(ARRIVAL_DELAY_LABELS)])


@asset(
    **{**MONTHLY, "group_name": "monitoring"},
    deps=[on_time_performance],
    # A month's answers can be judged once its actual arrivals land: follow them, as the features do.
    automation_condition=AutomationCondition.eager(),
    kinds={"mongodb", "parquet"},
    description="Every stored answer for a flight of the month, joined with the flight's actual "
    "ArrDelay bucket (same FlightDate, Carrier, FlightNum, Origin, Dest), one row per answer and "
    "model version: the champion that served it and each challenger scored in its shadow. "
    "Metadata: matched and unmatched answers, live accuracy and weighted F1 per version beside its "
    "offline held-out accuracy, confusion matrices, calibration, each version's mean absolute "
    "contribution per input (which inputs it leans on), and charts (a run over several "
    "months reports them together). Answers stored later are taken in by materializing the month "
    "again.",
)
def prediction_outcomes(context: AssetExecutionContext, mongo: MongoResource,
                        warehouse: WarehouseResource,
                        model_store: ModelStoreResource) -> MaterializeResult:
    months = context.partition_keys
    flights = read_arrow_months(warehouse.table_path("on_time_performance"), months,
                                [*monitoring.FLIGHT_KEY, "ArrDelay"])
    flights["FlightDate"] = flights["FlightDate"].astype(str)  # as requests write it
    outcomes = monitoring.join_outcomes(monitoring.answer_rows(read_answers(mongo, months)), flights)

    path = warehouse.table_path(OUTCOMES)
    month_of_row = outcomes["FlightDate"].str[:7]
    stored = outcomes.assign(FlightDate=pd.to_datetime(outcomes["FlightDate"]).dt.date)
    for month in months:
        write_month(stored[month_of_row == month], path, month)

    # Imported here: matplotlib costs 0.5 s and 50 MiB, which only the runs that draw should pay
    # (not the code server, nor the stream's run, which load this module too).
    from flight_platform.batch import outcome_charts

    store = model_store.store()
    versions = monitoring.version_metrics(outcomes)
    versions["OfflineAccuracy"] = [offline_accuracy(store, v) for v in versions["ModelVersion"]]
    served = outcomes[outcomes["Role"] == monitoring.CHAMPION]  # one row per answer
    served_matched = monitoring.matched(served)
    served_matrix = monitoring.confusion_matrix(served_matched["ActualBucket"],
                                                served_matched["Prediction"])
    unmatched = served["Outcome"].value_counts().reindex(monitoring.UNMATCHED, fill_value=0)
    daily = monitoring.daily_accuracy(outcomes)
    calibration = monitoring.calibration(outcomes)
    served_accuracy = monitoring.accuracy(served_matrix)
    return MaterializeResult(metadata={
        "dagster/row_count": len(outcomes),
        "path": MetadataValue.path(path),
        "answers": len(served),
        "answers_matched": int(served_matrix.sum()),
        "answers_unmatched": int(unmatched.sum()),
        "unmatched_by_reason": MetadataValue.json({k: int(v) for k, v in unmatched.items()}),
        "served_accuracy": _cell(served_accuracy),
        "accuracy_by_version": frame_table(versions),
        "accuracy_by_day": frame_table(daily),
        "accuracy_by_day_chart": MetadataValue.md(outcome_charts.accuracy_chart(daily, versions)),
        "confusion_matrix": frame_table(confusion_frame(monitoring.confusion_by_version(outcomes))),
        "calibration": frame_table(calibration),
        "calibration_chart": MetadataValue.md(outcome_charts.calibration_chart(calibration)),
        "mean_absolute_contribution_by_version": frame_table(
            monitoring.mean_absolute_contributions(outcomes)),
    })


def drift_check(threshold: float) -> AssetChecksDefinition:
    """The drift check of `prediction_outcomes`, warning when a feature's PSI is over `threshold`
    (settings.drift_psi_threshold)."""

    @asset_check(
        asset=prediction_outcomes, name=DRIFT_CHECK, blocking=False, partitions_def=flight_months,
        description=f"The requests served for the month's flights against the training features "
        f"of the champion that served most of them (its model.json months): population stability "
        f"index per feature, warning over {threshold}. {', '.join(DRIFT_NUMERIC)} are binned by "
        f"training deciles; {', '.join(CATEGORICAL_FEATURES)} by their "
        f"{monitoring.TOP_CATEGORIES} most frequent training categories plus 'other' and 'unseen' "
        f"(few bins: a few hundred requests over 200 route bins would cross 0.2 by chance). "
        f"{', '.join(CALENDAR_FEATURES)} are left out: a window of requests fixes them (one day has "
        f"one DayOfYear). Under {MIN_SERVED_REQUESTS} requests it passes, saying so.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource,
               model_store: ModelStoreResource) -> AssetCheckResult:
        features = [*DRIFT_NUMERIC, *CATEGORICAL_FEATURES]
        outcomes = read_arrow_months(warehouse.table_path(OUTCOMES), context.partition_keys,
                                     [*features, "ModelVersion", "Role"])
        served = outcomes[outcomes["Role"] == monitoring.CHAMPION]  # one row per request
        if len(served) < MIN_SERVED_REQUESTS:
            return AssetCheckResult(
                passed=True, metadata={"served_requests": len(served)},
                description=f"{len(served)} requests served, under {MIN_SERVED_REQUESTS}: too few "
                "to tell drift from sampling noise.")
        version = served["ModelVersion"].value_counts().idxmax()
        try:
            months = model_store.store().read_info(version)["months"]
        except FileNotFoundError:
            return AssetCheckResult(
                passed=False, severity=AssetCheckSeverity.WARN,
                metadata={"served_requests": len(served), "compared_with_version": version},
                description=f"Model version {version}, which served most requests, has been pruned "
                "from the store: what it trained on is unknown.")
        training = read_arrow_months(warehouse.table_path("flight_delay_features"), months,
                                     features)
        drift = monitoring.feature_drift(training, served, DRIFT_NUMERIC, CATEGORICAL_FEATURES)
        over = drift[drift["PSI"] > threshold]
        if len(over):
            description = (f"PSI over {threshold} for " + ", ".join(
                f"{row.Feature} ({row.PSI:.2f})" for row in over.itertuples())
                + f": the requests served differ from what model {version} trained on.")
        else:
            largest = drift.loc[drift["PSI"].idxmax()]
            description = (f"Every feature's PSI is under {threshold} (largest: "
                           f"{largest['Feature']} {largest['PSI']:.3f}).")
        return AssetCheckResult(
            passed=over.empty,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "psi_by_feature": frame_table(drift),
                "threshold": threshold,
                "features_over_threshold": MetadataValue.json(over["Feature"].tolist()),
                "served_requests": len(served),
                "compared_with_version": version,
                "training_months": MetadataValue.json(months),
                "training_rows": len(training),
                "left_out": ", ".join(CALENDAR_FEATURES),
            },
            description=description,
        )

    return _check
