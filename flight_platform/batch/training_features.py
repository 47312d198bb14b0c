"""Stage 2b: the training table, with the same feature code the serving side uses."""

import datetime as dt

import pandas as pd
from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, asset
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flight_platform.batch.ingest import on_time_performance
from flight_platform.batch.sources import MONTH_COLUMN, MONTHLY
from flight_platform.batch.tables import (
    not_null_result,
    not_null_spec,
    read_months,
    table_metadata,
    write_months,
)
from flight_platform.core.features import date_features, route
from flight_platform.resources import WarehouseResource

# The book's feature table: model inputs, the label (ArrDelay) and what identifies a flight.
FEATURE_TABLE_COLUMNS = [
    "FlightNum", "FlightDate", "DayOfWeek", "DayOfMonth", "DayOfYear", "Carrier", "Origin", "Dest",
    "Route", "Distance", "DepDelay", "ArrDelay", "CRSDepTime", "CRSArrTime",
]


# The small lookup tables go to Spark as pandas frames: Arrow hands them to the JVM directly, where
# a list of Python rows needs Python worker processes started to unpickle it (a second each).

def calendar(spark: SparkSession, dates: list[dt.date]) -> DataFrame:
    """`date_features` of each date, as a small table to join on FlightDate. Applying the pure
    function to the distinct dates keeps one copy of the rule for training and serving."""
    return spark.createDataFrame(
        pd.DataFrame([{"FlightDate": day, **date_features(day)} for day in dates]),
        schema="FlightDate date, DayOfMonth int, DayOfWeek int, DayOfYear int",
    )


def routes(spark: SparkSession, pairs: list[tuple[str, str]]) -> DataFrame:
    return spark.createDataFrame(
        pd.DataFrame([(o, d, route(o, d)) for o, d in pairs], columns=["Origin", "Dest", "Route"]),
        schema="Origin string, Dest string, Route string")


@asset(
    **MONTHLY,
    deps=[on_time_performance],
    # A month's features follow its on-time data as soon as it lands.
    automation_condition=AutomationCondition.eager(),
    kinds={"spark", "parquet"},
    description="Training features (the book's columns) for every flight that arrived, per month: "
    "cancelled and diverted flights have no arrival delay to learn from and are left out. Date "
    "features and Route come from flight_platform.core.features, the code the web app uses.",
    check_specs=[not_null_spec("flight_delay_features", FEATURE_TABLE_COLUMNS)],
)
def flight_delay_features(context: AssetExecutionContext, spark: LazyPySparkResource,
                          warehouse: WarehouseResource) -> MaterializeResult:
    session = spark.spark_session
    months = context.partition_keys
    flights = read_months(session, warehouse.table_path("on_time_performance"), months)
    arrived = flights.where(~F.col("Cancelled") & ~F.col("Diverted")
                            & F.col("ArrDelay").isNotNull() & F.col("DepDelay").isNotNull())
    # One pass for both lookup tables: each route flown, with the dates it was flown on.
    flown = arrived.groupBy("Origin", "Dest").agg(F.collect_set("FlightDate").alias("dates")).collect()
    pairs = [(r["Origin"], r["Dest"]) for r in flown]
    dates = sorted({day for r in flown for day in r["dates"]})
    features = (
        arrived.drop("DayOfWeek", "DayOfMonth")
        .join(F.broadcast(calendar(session, dates)), "FlightDate")
        .join(F.broadcast(routes(session, pairs)), ["Origin", "Dest"])
        .select(*FEATURE_TABLE_COLUMNS, MONTH_COLUMN)
    )
    path = warehouse.table_path("flight_delay_features")
    write_months(features, path)
    written = read_months(session, path, months)
    dropped = flights.agg(
        F.sum(F.col("Cancelled").cast("int")).alias("cancelled"),
        F.sum((~F.col("Cancelled") & F.col("Diverted")).cast("int")).alias("diverted"),
        F.count(F.lit(1)).alias("all"),
    ).first()
    metadata = table_metadata(written, path)
    return MaterializeResult(metadata={
        **metadata,
        "source_rows": dropped["all"],
        "dropped_cancelled": int(dropped["cancelled"] or 0),
        "dropped_diverted": int(dropped["diverted"] or 0),
        "dropped_missing_delay": dropped["all"] - int(dropped["cancelled"] or 0)
        - int(dropped["diverted"] or 0) - metadata["dagster/row_count"],
        "distinct_routes": len(pairs),
    }, check_results=[not_null_result(written, FEATURE_TABLE_COLUMNS)])
