"""What the Parquet-table assets share: metadata a user wants to see, and the not-null check."""

from collections.abc import Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flight_platform.warehouse import MONTH_COLUMN, month_of

PREVIEW_ROWS = 5
NOT_NULL = "required_columns_not_null"
OPEN_COST = "spark.sql.files.openCostInBytes"


@dataclass(frozen=True)
class WrittenMonths:
    """What the months a table asset has just written hold, from one aggregate pass over them."""

    metadata: dict  # row count, column schema, location and the first rows
    not_null: AssetCheckResult
    figures: dict  # the asset's own aggregates, by name


def inspect_written(written: DataFrame, path: str, required: Sequence[str],
                    **figures: Column) -> WrittenMonths:
    """Count the rows of `written`, the nulls of each `required` column (the blocking not-null
    check) and the asset's `figures` in one pass (every query is a job of its own),
    then read a preview."""
    counts = written.agg(F.count(F.lit(1)), *[F.sum(F.col(c).isNull().cast("int")) for c in required],
                         *figures.values()).first()
    rows, nulls = counts[0], dict(zip(required, counts[1:len(required) + 1], strict=True))
    schema = TableSchema(columns=[
        TableColumn(field.name, field.dataType.simpleString()) for field in written.schema.fields])
    preview = [
        TableRecord({k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                     for k, v in row.asDict().items()})
        for row in written.limit(PREVIEW_ROWS).collect()
    ]
    return WrittenMonths(
        metadata={
            "dagster/row_count": rows,
            "dagster/column_schema": schema,
            "path": MetadataValue.path(path),
            "preview": MetadataValue.table(preview, schema=schema),
        },
        not_null=not_null_result(rows, nulls),
        figures=dict(zip(figures, counts[len(required) + 1:], strict=True)),
    )


def write_months(table: DataFrame, path: str) -> None:
    """Write the months of `table` (its FlightMonth values) into the table at `path`, a directory
    per month, replacing those months only.

    What a monthly table is written from is read a file per month (a month of another monthly
    table, a BTS download), so with each file read in a task of its own, a task holds one month
    and writes it without a shuffle to gather the months (1 s less on the bundled year). Spark
    would otherwise pack several small files into a task, which must then sort several months.
    """
    spark = table.sparkSession
    open_cost = spark.conf.get(OPEN_COST)
    # Opening a file is declared to cost a whole task's worth of bytes: one file per task.
    spark.conf.set(OPEN_COST, spark.conf.get("spark.sql.files.maxPartitionBytes"))
    try:
        (table.write.mode("overwrite").option("partitionOverwriteMode", "dynamic")
         .partitionBy(MONTH_COLUMN).parquet(path))
    finally:
        spark.conf.set(OPEN_COST, open_cost)


def read_months(spark: SparkSession, path: str, months: Sequence[str],
                schema: str | None = None) -> DataFrame:
    """The rows of `months` of the monthly table at `path`: Spark reads only their directories,
    so a run (or a check) costs its months, not the whole history. Given the table's `schema`,
    Spark skips the job that reads it from a file's footer."""
    reader = spark.read.schema(schema) if schema else spark.read
    return reader.parquet(path).where(F.col(MONTH_COLUMN).isin(list(months)))


def months_held(table: DataFrame) -> list[str]:
    """The months a monthly table read whole holds, from its month directories' names: listed when
    the table was opened, so no Spark job scans it for them."""
    return sorted({month for file in table.inputFiles() if (month := month_of(file)) is not None})


def not_null_spec(table_name: str, columns: Sequence[str]) -> AssetCheckSpec:
    """A blocking check of the table asset `table_name`, evaluated by the asset on the months it has
    just written (`inspect_written`): they have rows and none of `columns` is null in any of them."""
    return AssetCheckSpec(NOT_NULL, asset=table_name, blocking=True,
                          description=f"Has rows, and {', '.join(columns)} are never null.")


def not_null_result(rows: int, nulls: dict[str, int | None]) -> AssetCheckResult:
    nulls = {column: int(n) for column, n in nulls.items() if n}
    return AssetCheckResult(
        check_name=NOT_NULL,
        passed=rows > 0 and not nulls,
        metadata={"rows": rows, "null_counts": nulls or "none"},
        description=None if rows else "The table is empty.",
    )
