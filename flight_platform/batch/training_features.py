"""Stage 2b: the training table, with the same feature code the serving side uses."""

import datetime as dt

import pandas as pd
from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, asset
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flight_platform.batch.ingest import on_time_performance
from flight_platform.batch.sources import MONTHLY, days_of_months
from flight_platform.batch.tables import inspect_written, not_null_spec, read_months, write_months
from flight_platform.core.features import date_features, route
from flight_platform.resources import SparkResource, WarehouseResource
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES, MONTH_COLUMN, ON_TIME_PERFORMANCE

# The book's feature table: model inputs, the label (ArrDelay) and what identifies a flight.
FEATURE_TABLE_COLUMNS = [
    "FlightNum", "FlightDate", "DayOfWeek", "DayOfMonth", "DayOfYear", "Carrier", "Origin", "Dest",
    "Route", "Distance", "DepDelay", "ArrDelay", "CRSDepTime", "CRSArrTime",
]


# The small lookup tables go to Spark as pandas frames: Arrow hands them to the JVM directly, where
# a list of Python rows needs Python worker processes started to unpickle it (a second each).

def calendar(spark: SparkSession, dates: list[dt.date]) -> DataFrame:
    """`date_features` of each date, as a small table to join on FlightDate. Applying the pure
    function to every day of the months keeps one copy of the rule for training and serving."""
    return spark.createDataFrame(
        pd.DataFrame([{"FlightDate": day, **date_features(day)} for day in dates]),
        schema="FlightDate date, DayOfMonth int, DayOfWeek int, DayOfYear int",
    )


def routes(spark: SparkSession, pairs: list[tuple[str, str]]) -> DataFrame:
    return spark.createDataFrame(
        pd.DataFrame([(o, d, route(o, d)) for o, d in pairs], columns=["Origin", "Dest", "Route"]),
        schema="Origin string, Dest string, Route string")


@asset(
    name=FLIGHT_DELAY_FEATURES,
    **MONTHLY,
    deps=[on_time_performance],
    # A month's features follow its on-time data as soon as it lands.
    automation_condition=AutomationCondition.eager(),
    kinds={"spark", "parquet"},
    description="Training features (the book's columns) for every flight that arrived, per month: "
    "cancelled and diverted flights have no arrival delay to learn from and are left out. Date "
    "features and Route come from flight_platform.core.features, the code the web app uses.",
    check_specs=[not_null_spec(FLIGHT_DELAY_FEATURES, FEATURE_TABLE_COLUMNS)],
)
def flight_delay_features(context: AssetExecutionContext, spark: SparkResource,
                          warehouse: WarehouseResource) -> MaterializeResult:
    session = spark.spark_session
    months = context.partition_keys
    flights = read_months(session, warehouse.table_path(ON_TIME_PERFORMANCE), months)
    has_arrived = (~F.col("Cancelled") & ~F.col("Diverted")
                   & F.col("ArrDelay").isNotNull() & F.col("DepDelay").isNotNull())
    # One pass for the routes flown (the Route lookup) and for what is left out, and why.
    by_route = flights.groupBy("Origin", "Dest").agg(
        F.sum(has_arrived.cast("int")).alias("arrived"),
        F.sum(F.col("Cancelled").cast("int")).alias("cancelled"),
        F.sum((~F.col("Cancelled") & F.col("Diverted")).cast("int")).alias("diverted"),
        F.count(F.lit(1)).alias("flights"),
    ).collect()
    pairs = [(r["Origin"], r["Dest"]) for r in by_route if r["arrived"]]
    features = (
        flights.where(has_arrived).drop("DayOfWeek", "DayOfMonth")
        .join(F.broadcast(calendar(session, days_of_months(months))), "FlightDate")
        .join(F.broadcast(routes(session, pairs)), ["Origin", "Dest"])
        .select(*FEATURE_TABLE_COLUMNS, MONTH_COLUMN)
    )
    path = warehouse.table_path(FLIGHT_DELAY_FEATURES)
    write_months(features, path)
    written = inspect_written(read_months(session, path, months), path, FEATURE_TABLE_COLUMNS)
    dropped = {column: sum(r[column] or 0 for r in by_route)
               for column in ("flights", "cancelled", "diverted")}
    return MaterializeResult(metadata={
        **written.metadata,
        "source_rows": dropped["flights"],
        "dropped_cancelled": dropped["cancelled"],
        "dropped_diverted": dropped["diverted"],
        "dropped_missing_delay": dropped["flights"] - dropped["cancelled"] - dropped["diverted"]
        - written.metadata["dagster/row_count"],
        "distinct_routes": len(pairs),
    }, check_results=[written.not_null])
