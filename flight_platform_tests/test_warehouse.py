"""The warehouse's layout: tables named after the assets that write them, months replaced whole."""

import pyarrow as pa
from dagster import AssetKey

from flight_platform import warehouse
from flight_platform.definitions import build_definitions
from flight_platform.settings import load_settings

TABLE = warehouse.PREDICTION_OUTCOMES


def test_every_warehouse_table_is_the_name_of_the_asset_writing_it():
    keys = build_definitions(load_settings()).resolve_asset_graph().get_all_asset_keys()
    tables = [warehouse.ON_TIME_PERFORMANCE, warehouse.FLIGHT_DELAY_FEATURES, warehouse.PREDICTION_OUTCOMES]
    assert {AssetKey(table) for table in tables} <= keys


def rows(*values: int) -> pa.Table:
    return pa.table({"value": list(values)})


def test_a_month_is_replaced_whole_and_what_a_killed_write_left_is_never_read(tmp_path):
    root = str(tmp_path)
    written = warehouse.write_month(root, TABLE, "2013-01", rows(1, 2))
    warehouse.write_month(root, TABLE, "2013-02", rows(3))
    assert written == tmp_path / f"{TABLE}.parquet" / "FlightMonth=2013-01"
    # A write killed half-way leaves a hidden directory: readers skip it...
    leftover = written.with_name(f".{written.name}.killed")
    leftover.mkdir()
    (leftover / warehouse.PART_FILE).write_bytes(b"half a file")
    read = warehouse.read_months(root, TABLE, ["2013-01"], ["value", warehouse.MONTH_COLUMN])
    assert read.column("value").to_pylist() == [1, 2]

    # ...and the month's next write replaces the month whole and clears it.
    warehouse.write_month(root, TABLE, "2013-01", rows(7))
    read = warehouse.read_months(root, TABLE, ["2013-01", "2013-02"], ["value"])
    assert sorted(read.column("value").to_pylist()) == [3, 7]
    assert sorted(path.name for path in written.parent.iterdir()) == ["FlightMonth=2013-01",
                                                                      "FlightMonth=2013-02"]


def test_the_month_of_a_path_inside_a_table():
    table = "/w/on_time_performance.parquet"
    assert warehouse.month_of(f"{table}/FlightMonth=2013-04/part-0.parquet") == "2013-04"
    assert warehouse.month_of(f"{table}/_SUCCESS") is None
