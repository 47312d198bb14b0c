"""The model's freshness check and its sensor, against a real (SQLite) Dagster instance whose event log
holds the features' and the model's materializations."""

import datetime as dt
import time

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from flight_platform.batch.freshness import CHECK_KEY, model_freshness, model_freshness_sensor
from flight_platform.core.model_store import FLIGHT_DELAY_MODEL
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES

WINDOW = dt.timedelta(minutes=120)


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def land(instance, *months):
    for month in months:
        instance.report_runless_asset_event(
            AssetMaterialization(AssetKey(FLIGHT_DELAY_FEATURES), partition=month))


def train(instance, version, months):
    instance.report_runless_asset_event(AssetMaterialization(
        AssetKey(FLIGHT_DELAY_MODEL),
        metadata={"model_version": version, "promoted": True, "months": months}))


def after(minutes: float) -> float:
    return time.time() + minutes * 60


def test_a_month_waiting_for_a_training_passes_until_the_window_runs_out(instance):
    land(instance, "2013-01", "2013-02")
    train(instance, "v1", ["2013-01", "2013-02"])
    trained = model_freshness(instance, WINDOW, after(0))
    assert trained.passed and "No month's features changed since the last training" in trained.description
    assert trained.metadata["model_version"].value == "v1"

    land(instance, "2014-01", "2014-01", "2014-02")  # a month landed twice is named once
    waiting = model_freshness(instance, WINDOW, after(119))
    assert waiting.passed and waiting.waiting_months == ("2014-01", "2014-02")
    assert "a training is due by" in waiting.description

    late = model_freshness(instance, WINDOW, after(121))
    assert not late.passed and late.waiting_months == ("2014-01", "2014-02")
    assert late.description.startswith("2014-01, 2014-02: features landed 2 h 1 min ago")
    assert "FLIGHT_PLATFORM_RETRAIN_WINDOW_MINUTES" in late.description

    train(instance, "v2", ["2013-01", "2013-02", "2014-01", "2014-02"])
    caught_up = model_freshness(instance, WINDOW, after(121))
    assert caught_up.passed and caught_up.waiting_months == ()
    assert caught_up.metadata["model_version"].value == "v2"


def test_features_never_trained_on_fail_after_the_window(instance):
    nothing = model_freshness(instance, WINDOW, after(500))  # nothing landed: nothing to learn
    assert nothing.passed and nothing.description == "No month's features materialized yet."
    land(instance, "2013-01")
    waiting = model_freshness(instance, WINDOW, after(1))
    assert waiting.passed and "no model is trained yet; a training is due by" in waiting.description
    never = model_freshness(instance, WINDOW, after(121))
    assert not never.passed and never.waiting_months == ("2013-01",)
    assert never.model_record is None and "model_version" not in never.metadata


def test_the_sensor_reports_each_change_once_without_a_run(instance):
    sensor = model_freshness_sensor(dt.timedelta(0), 15)  # every month waiting is late at once

    def tick(cursor):
        result = sensor(build_sensor_context(instance=instance, cursor=cursor))
        if isinstance(result, SkipReason):
            return result, cursor
        assert not result.run_requests
        for event in result.asset_events:  # as the daemon stores them
            instance.report_runless_asset_event(event)
        return result, result.cursor

    train(instance, "v1", ["2013-01"])
    first, cursor = tick(None)
    assert isinstance(first, SensorResult) and first.asset_events[0].passed
    unchanged, cursor = tick(cursor)
    assert isinstance(unchanged, SkipReason) and "Unchanged" in unchanged.skip_message

    land(instance, "2013-02")
    failed, cursor = tick(cursor)
    assert isinstance(failed, SensorResult) and not failed.asset_events[0].passed
    record = instance.get_latest_asset_check_evaluation_record(CHECK_KEY)
    assert not record.evaluation.passed and "2013-02" in record.evaluation.description
    # The evaluation is against the model's last materialization, as the UI shows it.
    trained = instance.fetch_materializations(AssetKey(FLIGHT_DELAY_MODEL), limit=1).records[0]
    assert record.evaluation.target_materialization_data.storage_id == trained.storage_id
    assert isinstance(tick(cursor)[0], SkipReason)

    train(instance, "v2", ["2013-01", "2013-02"])
    passed, _ = tick(cursor)
    assert isinstance(passed, SensorResult) and passed.asset_events[0].passed
    assert instance.get_latest_asset_check_evaluation_record(CHECK_KEY).evaluation.passed
