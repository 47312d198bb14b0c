"""Frames as Dagster table metadata: what the assets and checks that report tables share."""

import math

import numpy as np
import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from flight_platform.core.features import ARRIVAL_DELAY_LABELS


def cell(value):
    """A table cell: NumPy scalars as Python ones, NaN and NA (nothing to measure) as empty."""
    if value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), 4)
    return value.item() if isinstance(value, np.generic) else value


def frame_table(frame: pd.DataFrame) -> MetadataValue:
    """A frame as a Dagster table, its columns typed (the UI aligns and sorts by type)."""
    types = {column: "int" if pd.api.types.is_integer_dtype(dtype)
             else "float" if pd.api.types.is_float_dtype(dtype) else "string"
             for column, dtype in frame.dtypes.items()}
    return MetadataValue.table(
        [TableRecord({column: cell(value) for column, value in row.items()})
         for row in frame.to_dict("records")],
        schema=TableSchema([TableColumn(column, kind) for column, kind in types.items()]))


def confusion_frame(matrix: np.ndarray) -> pd.DataFrame:
    """A confusion matrix (actual bucket x predicted bucket) as rows: the actual bucket with its
    label, then the count predicted as each bucket."""
    return pd.DataFrame([
        {"Actual": f"{bucket} {label}",
         **{f"Predicted {j}": int(count) for j, count in enumerate(matrix[bucket])}}
        for bucket, label in enumerate(ARRIVAL_DELAY_LABELS)])
