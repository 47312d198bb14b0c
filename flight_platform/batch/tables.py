"""What the Parquet-table assets share: metadata a user wants to see, and the not-null check."""

from collections.abc import Sequence

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset_check,
)
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flight_platform.batch.sources import MONTH_COLUMN, flight_months
from flight_platform.resources import WarehouseResource

PREVIEW_ROWS = 5


def table_metadata(table: DataFrame, path: str) -> dict:
    """Row count, column schema, location and the first rows of a written table."""
    schema = TableSchema(columns=[
        TableColumn(field.name, field.dataType.simpleString()) for field in table.schema.fields])
    preview = [
        TableRecord({k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                     for k, v in row.asDict().items()})
        for row in table.limit(PREVIEW_ROWS).collect()
    ]
    return {
        "dagster/row_count": table.count(),
        "dagster/column_schema": schema,
        "path": MetadataValue.path(path),
        "preview": MetadataValue.table(preview, schema=schema),
    }


def write_months(table: DataFrame, path: str) -> None:
    """Write the months of `table` (its FlightMonth values) into the table at `path`, a directory
    per month, replacing those months only. One file per month: a month is a few MB."""
    (table.repartition(MONTH_COLUMN).write.mode("overwrite")
     .option("partitionOverwriteMode", "dynamic").partitionBy(MONTH_COLUMN).parquet(path))


def read_months(spark: SparkSession, path: str, months: Sequence[str]) -> DataFrame:
    """The rows of `months` of the monthly table at `path`: Spark reads only their directories,
    so a run (or a check) costs its months, not the whole history."""
    return spark.read.parquet(path).where(F.col(MONTH_COLUMN).isin(list(months)))


def not_null_check(table_name: str, columns: Sequence[str]) -> AssetChecksDefinition:
    """A blocking check on the months just written of the table `table_name` (also its asset key):
    they have rows and none of `columns` is null in any of them."""

    @asset_check(asset=AssetKey(table_name), name="required_columns_not_null", blocking=True,
                 partitions_def=flight_months,
                 description=f"Has rows, and {', '.join(columns)} are never null.")
    def _check(context: AssetCheckExecutionContext, spark: LazyPySparkResource,
               warehouse: WarehouseResource) -> AssetCheckResult:
        table = read_months(spark.spark_session, warehouse.table_path(table_name),
                            context.partition_keys)
        counts = table.agg(F.count(F.lit(1)).alias("rows"), *[
            F.sum(F.col(c).isNull().cast("int")).alias(c) for c in columns]).first().asDict()
        rows = counts.pop("rows")
        nulls = {column: int(n or 0) for column, n in counts.items() if n}
        return AssetCheckResult(
            passed=rows > 0 and not nulls,
            metadata={"rows": rows, "null_counts": nulls or "none"},
            description=None if rows else "The table is empty.",
        )

    return _check
