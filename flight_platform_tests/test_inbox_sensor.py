"""The BTS inbox sensor, evaluated with Dagster's test utilities against a real (SQLite) instance and
real files in a scratch inbox."""

import os
import zipfile

import pytest
from dagster import RunRequest, SensorResult, SkipReason, build_sensor_context, instance_for_test

from flight_platform.batch.inbox import look_in_inbox
from flight_platform.resources import WarehouseResource
from flight_platform_dev.derived_bts import bts_file_name, derived_month, write_bts_csv


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def inbox(tmp_path):
    inbox = tmp_path / "bts"
    inbox.mkdir()
    return inbox


@pytest.fixture
def write_month(inbox, nyc_flights):
    january = nyc_flights[nyc_flights["Month"] == 1].iloc[:50]

    def write(year: int, month: int = 1):
        path = inbox / bts_file_name(year, month)
        write_bts_csv(path, derived_month(january.assign(Month=month), year, month, seed=1))
        return path

    return write


def evaluate(instance, inbox, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={
        "warehouse": WarehouseResource(root=str(inbox.parent / "warehouse"), bts_dir=str(inbox))})
    return look_in_inbox(context, context.resources.warehouse), context.cursor


def requested_months(result) -> list[str]:
    assert isinstance(result, SensorResult), result
    return sorted(r.partition_key for r in result.run_requests)


def test_a_new_download_registers_and_requests_exactly_its_month(instance, inbox, write_month):
    write_month(2014, 3)
    result, cursor = evaluate(instance, inbox)
    assert requested_months(result) == ["2014-03"]
    (added,) = result.dynamic_partitions_requests
    assert list(added.partition_keys) == ["2014-03"]
    again, _ = evaluate(instance, inbox, cursor)  # e.g. after a daemon restart: nothing new
    assert isinstance(again, SkipReason) and "No new or changed" in again.skip_message


def test_a_replaced_download_is_requested_again(instance, inbox, write_month):
    path = write_month(2014)
    _, cursor = evaluate(instance, inbox)
    write_month(2014)  # the same month downloaded again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    result, _ = evaluate(instance, inbox, cursor)
    assert requested_months(result) == ["2014-01"]
    assert all(isinstance(r, RunRequest) and r.tags["flight_platform/bts_file"] == path.name
               for r in result.run_requests)


@pytest.mark.parametrize("name, content, problem", [
    ("weather.csv", b"station,temp\nJFK,3\n", "is not a BTS on-time performance file"),
    ("truncated_2014_2.zip", b"PK\x03\x04 not really a zip", "cannot be read: BadZipFile"),
    ("empty.csv", b"", "is empty"),
])
def test_an_unreadable_file_is_reported_and_the_others_go_on(instance, inbox, write_month, name,
                                                             content, problem):
    (inbox / name).write_bytes(content)
    alone, cursor = evaluate(instance, inbox)
    assert isinstance(alone, SkipReason) and name in alone.skip_message
    assert problem in alone.skip_message
    write_month(2015)
    result, _ = evaluate(instance, inbox, cursor)
    assert requested_months(result) == ["2015-01"]


def test_a_zipped_download_is_read(instance, inbox, write_month):
    csv_path = write_month(2016, 5)
    with zipfile.ZipFile(inbox / "download.zip", "w") as archive:
        archive.write(csv_path, csv_path.name)
    csv_path.unlink()
    result, _ = evaluate(instance, inbox)
    assert requested_months(result) == ["2016-05"]
