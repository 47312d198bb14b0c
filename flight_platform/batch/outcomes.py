"""Live accuracy and drift: the answers the stream stored, joined with what the flights then did.

`prediction_outcomes` follows a month's on-time data: when it lands (or is replaced), every answer
stored for a flight of that month is joined with the flight's actual arrival delay bucket, and
each model version (the champion that served the answer and every challenger scored in its
shadow) is measured on it. Answers stored after that are taken in by materializing the month
again (on demand). Its drift check (`drift.py`) compares the requests served with what the model
trained on.

No Spark: a month of flights or answers is a few MB, read with pyarrow, and the answers come
straight from MongoDB. The charts are drawn by `outcome_charts`.
"""

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from flight_platform.batch.champion import review_champion
from flight_platform.batch.ingest import on_time_performance
from flight_platform.batch.metadata import cell, confusion_frame, frame_table
from flight_platform.batch.sources import MONTHLY
from flight_platform.clients.mongo import find_answers_for_months
from flight_platform.core import monitoring
from flight_platform.core.live_decisions import DecisionRule
from flight_platform.core.model_store import ModelStore
from flight_platform.resources import ModelStoreResource, MongoResource, WarehouseResource
from flight_platform.warehouse import ON_TIME_PERFORMANCE, PREDICTION_OUTCOMES

OUTCOMES_ARROW_SCHEMA = pa.schema([
    ("UUID", pa.string()), ("FlightDate", pa.date32()), ("Carrier", pa.string()),
    ("FlightNum", pa.string()), ("Origin", pa.string()), ("Dest", pa.string()),
    ("DepDelay", pa.float64()), ("Distance", pa.float64()), ("Route", pa.string()),
    ("ModelVersion", pa.string()), ("Role", pa.string()), ("Prediction", pa.int32()),
    ("Probabilities", pa.list_(pa.float64())),  # by bucket
    ("ArrDelay", pa.float64()), ("ActualBucket", pa.int32()), ("Outcome", pa.string()),
])


def read_answers(mongo: MongoResource, months: list[str]) -> list[dict]:
    """Every stored answer for a flight of `months`, with what judging it needs."""
    fields = [*monitoring.REQUEST_COLUMNS, "ModelVersion", "Prediction", "Probabilities",
              "Explanation.Features", "Explanation.Contributions", "Shadow"]
    return find_answers_for_months(mongo.get_database(), months, fields)


def read_outcomes_of(warehouse: WarehouseResource, versions: list[str]) -> pd.DataFrame:
    """The stored outcomes of `versions`, every month: what the live decisions judge."""
    wanted = pa.array(versions, pa.string())
    return warehouse.read_table(
        PREDICTION_OUTCOMES, ["UUID", "ModelVersion", "Prediction", "Probabilities", "ActualBucket",
                              "Outcome"], pc.field("ModelVersion").isin(wanted))


def offline_accuracy(store: ModelStore, version: str) -> float:
    """The held-out accuracy in the version's model.json; NaN (an empty cell) once the version is
    pruned from the store."""
    try:
        return store.read_info(version)["accuracy"]
    except FileNotFoundError:
        return float("nan")


@asset(
    name=PREDICTION_OUTCOMES,
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
    "again. Then the live decisions (batch.champion): every challenger tested against the champion "
    "on the flights both scored, with the evidence, what was done, and the champions' history.",
)
def prediction_outcomes(context: AssetExecutionContext, mongo: MongoResource,
                        warehouse: WarehouseResource,
                        model_store: ModelStoreResource) -> MaterializeResult:
    months = context.partition_keys
    flights = warehouse.read_months(ON_TIME_PERFORMANCE, months, [*monitoring.FLIGHT_KEY, "ArrDelay"])
    flights["FlightDate"] = flights["FlightDate"].astype(str)  # as requests write it
    outcomes = monitoring.join_outcomes(monitoring.answer_rows(read_answers(mongo, months)), flights)

    month_of_row = outcomes["FlightDate"].str[:7]
    stored = outcomes.assign(FlightDate=pd.to_datetime(outcomes["FlightDate"]).dt.date)
    for month in months:  # a month without answers gets an empty file: a reader sees it was judged
        warehouse.write_month(PREDICTION_OUTCOMES, month, pa.Table.from_pandas(
            stored[month_of_row == month], schema=OUTCOMES_ARROW_SCHEMA, preserve_index=False))

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
    confusion = pd.DataFrame([{"ModelVersion": version, **row}
                              for version, matrix in monitoring.confusion_by_version(outcomes).items()
                              for row in confusion_frame(matrix).to_dict("records")])
    review = review_champion(
        store, lambda versions: read_outcomes_of(warehouse, versions), model_store.live_decisions,
        DecisionRule(model_store.decision_alpha, model_store.promotion_margin,
                     model_store.decision_min_pairs),
        model_store.probation_pairs, model_store.probation_days, context.log)
    return MaterializeResult(metadata={
        "live_decisions": frame_table(review.evidence),
        "live_decision_actions": MetadataValue.json(review.actions),
        "live_decisions_mode": model_store.live_decisions,
        "champions": frame_table(pd.DataFrame(store.champions())),
        "dagster/row_count": len(outcomes),
        "path": MetadataValue.path(warehouse.table_path(PREDICTION_OUTCOMES)),
        "answers": len(served),
        "answers_matched": int(served_matrix.sum()),
        "answers_unmatched": int(unmatched.sum()),
        "unmatched_by_reason": MetadataValue.json({k: int(v) for k, v in unmatched.items()}),
        "served_accuracy": cell(served_accuracy),
        "accuracy_by_version": frame_table(versions),
        "accuracy_by_day": frame_table(daily),
        "accuracy_by_day_chart": MetadataValue.md(outcome_charts.accuracy_chart(daily, versions)),
        "confusion_matrix": frame_table(confusion),
        "calibration": frame_table(calibration),
        "calibration_chart": MetadataValue.md(outcome_charts.calibration_chart(calibration)),
        "mean_absolute_contribution_by_version": frame_table(
            monitoring.mean_absolute_contributions(outcomes)),
    })
