"""The Parquet warehouse's layout, in one place: a directory per table, named after the asset that
writes it (`<root>/<asset>.parquet`), holding a directory per month (`FlightMonth=YYYY-MM`). The
assets take their names from here, so a table and the asset producing it cannot drift apart.

No Dagster, no Spark: the assets, their checks, the replay tool and the tests all read and write it
through here. The root is a local path by default; Spark also takes an s3a:// or hdfs:// URI, but the
months written here with pyarrow (by the driver) need a path the driver can write to.
"""

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The monthly tables, each named after the asset that writes it.
ON_TIME_PERFORMANCE = "on_time_performance"
FLIGHT_DELAY_FEATURES = "flight_delay_features"
PREDICTION_OUTCOMES = "prediction_outcomes"
DRIFT_CHECK = "served_features_within_drift_threshold"  # prediction_outcomes' check (batch.drift)
MODEL_FRESHNESS_CHECK = "trained_on_every_month_landed"  # flight_delay_model's (batch.freshness)

MONTH_COLUMN = "FlightMonth"  # the partition column: 'YYYY-MM', one directory per month
PART_FILE = "part-00000.parquet"


def table_path(root: str, table: str) -> str:
    return f"{root.rstrip('/')}/{table}.parquet"


def month_directory(month: str) -> str:
    return f"{MONTH_COLUMN}={month}"


def month_path(root: str, table: str, month: str) -> Path:
    return Path(table_path(root, table)) / month_directory(month)


def month_of(path: str) -> str | None:
    """The month of a file or directory inside a monthly table, from its path; None outside one."""
    prefix = f"{MONTH_COLUMN}="
    return next((part[len(prefix):] for part in path.split("/") if part.startswith(prefix)), None)


def write_month(root: str, table: str, month: str, rows: pa.Table) -> Path:
    """Replace the month's directory of `table` with `rows`. The new directory is written beside it
    under a hidden name (readers skip names starting with '.') and renamed into place, so no reader
    ever sees part of a month: only the old one, the new one, or, between two renames, none. What
    a run killed mid-write leaves is hidden, and removed by the month's next write. Returns the
    month's directory."""
    target = month_path(root, table, month)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(leftover)
    staged = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    staged.mkdir()
    pq.write_table(rows, staged / PART_FILE)
    replaced = target.with_name(f".{target.name}.replaced")
    if target.exists():
        target.rename(replaced)
    staged.rename(target)
    shutil.rmtree(replaced, ignore_errors=True)
    return target


def read_months(root: str, table: str, months: Sequence[str], columns: Sequence[str],
                filters=None) -> pa.Table:
    """`columns` of the rows of `months` of `table`: only those months' directories are read.
    `filters` (a pyarrow expression) narrows the rows further."""
    condition = pc.field(MONTH_COLUMN).isin(list(months))
    if filters is not None:
        condition = condition & filters
    return read_table(root, table, columns, condition)


def read_table(root: str, table: str, columns: Sequence[str], filters=None) -> pa.Table:
    """`columns` of every month of `table` (an empty table if none was written), narrowed by
    `filters`."""
    if not Path(table_path(root, table)).exists():
        return pa.table({column: pa.array([], pa.null()) for column in columns})
    return pq.read_table(table_path(root, table), columns=list(columns), filters=filters)
