"""prediction_outcomes and its drift check, on answers stored in the real MongoDB-protocol server
for real flights of June 2013, materialized with Dagster against the session's tables and model.

Each test stores its answers in a database of its own, so answers other tests store (the stream
tests ask about 2013 flights too) never mix in. The answers are built as the stream builds them
(`PredictionRequest.response`, probabilities from the champion's serving scorer), with a naive
challenger in their Shadow. The normal day, 2013-06-21, is the June day whose departure delays
are closest to the year's; a day of storms (2013-06-28, mean delay 49 min) is itself a drift.
"""

import base64
import bisect
import shutil
import uuid
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)

from flight_platform.batch.drift import drift_check
from flight_platform.batch.outcomes import prediction_outcomes
from flight_platform.batch.sources import BUNDLED_MONTHS, flight_months
from flight_platform.clients.mongo import RESPONSES, create_client
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest, Scored
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer
from flight_platform.definitions import build_definitions
from flight_platform.resources import ModelStoreResource, build_resources, mongo_resource
from flight_platform.warehouse import DRIFT_CHECK, MONTH_COLUMN, PREDICTION_OUTCOMES
from flight_platform_dev.platform import share_services

pytestmark = pytest.mark.services

MONTH, NORMAL_DAY = "2013-06", "2013-06-21"
CHALLENGER, CHALLENGER_ACCURACY = "naive-departure-delay", 0.42
INNER_SPLITS = [-15.0, 0.0, 30.0]  # ARRIVAL_DELAY_SPLITS without the infinities


def bucket(minutes: float) -> int:
    """The delay bucket as Spark's Bucketizer puts it, written independently of the code tested."""
    return bisect.bisect_right(INNER_SPLITS, minutes)


@pytest.fixture
def database(running_services, settings):
    name = f"outcomes_{uuid.uuid4().hex[:12]}"
    share_services(settings, name)  # the asset reads it as the batch user
    with create_client(settings, Role.ADMIN) as client:
        yield client[name]
        client.drop_database(name)


@pytest.fixture
def model_store(materialized, settings, tmp_path) -> ModelStore:
    """A store holding the session's champion and the challenger's model.json (what the asset and
    the check read), so the challenger never enters the session's store."""
    session_store = ModelStore(settings.model_store_dir)
    champion = session_store.current_version()
    store = ModelStore(tmp_path / "models")
    store.version_dir(champion).mkdir(parents=True)
    shutil.copy(session_store.version_dir(champion) / "model.json", store.version_dir(champion))
    store.version_dir(CHALLENGER).mkdir(parents=True)
    store.write_info(CHALLENGER, {"accuracy": CHALLENGER_ACCURACY, "months": BUNDLED_MONTHS})
    return store


def june_flights(settings) -> pd.DataFrame:
    warehouse = build_resources(settings)["warehouse"]
    flights = pd.read_parquet(warehouse.table_path("on_time_performance"),
                              filters=[(MONTH_COLUMN, "=", MONTH)])
    return flights.assign(FlightDate=flights["FlightDate"].astype(str))


def store_answers(database, settings, flights: pd.DataFrame) -> list[dict]:
    """Answer a request for each flight as the stream does: the champion's probabilities, and a
    challenger that predicts the departure delay's bucket. Returns the documents stored."""
    session_store = ModelStore(settings.model_store_dir)
    champion = session_store.current_version()
    requests = [PredictionRequest.create(
        Carrier=f.Carrier, FlightDate=f.FlightDate, FlightNum=f.FlightNum, Origin=f.Origin,
        Dest=f.Dest, DepDelay=float(f.DepDelay), Distance=float(f.Distance))
        for f in flights.itertuples()]
    scorer = PipelineScorer.load(session_store.pipeline_dir(champion))
    scored = scorer.score([request.model_input() for request in requests])
    now = datetime.now(UTC)
    documents = [
        request.response(champion_scored, champion, now, shadow=[(CHALLENGER, Scored([
            1.0 if b == bucket(request.DepDelay) else 0.0 for b in range(4)]))])
        for request, champion_scored in zip(requests, scored, strict=True)]
    database[RESPONSES].insert_many(documents)
    return documents


def materialize_outcomes(settings, database, store: ModelStore):
    resources = {**build_resources(settings),
                 "mongo": mongo_resource(settings, Role.BATCH, database.name),
                 "model_store": ModelStoreResource(root=str(store.root))}
    result = materialize([prediction_outcomes, drift_check(settings.drift_psi_threshold)],
                         partition_key=MONTH, resources=resources, instance=DagsterInstance.get())
    (materialization,) = result.asset_materializations_for_node(PREDICTION_OUTCOMES)
    (check,) = result.get_asset_check_evaluations()
    return ({key: value.value for key, value in materialization.metadata.items()}, check)


def records(table) -> list[dict]:
    return [record.data for record in table.records]


def psi_figures(check) -> dict[str, float]:
    return {row["Feature"]: row["PSI"] for row in records(check.metadata["psi_by_feature"].value)}


def test_every_month_is_materialized_with_the_rest(materialized):
    instance = DagsterInstance.get()
    assert instance.get_materialized_partitions(AssetKey(PREDICTION_OUTCOMES)) >= set(BUNDLED_MONTHS)


def test_a_month_of_on_time_data_triggers_its_outcomes(settings):
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(flight_months.name, [MONTH])
        defs = build_definitions(settings)
        first = evaluate_automation_conditions(defs, instance)
        assert first.get_requested_partitions(AssetKey(PREDICTION_OUTCOMES)) == set()
        instance.report_runless_asset_event(
            AssetMaterialization("on_time_performance", partition=MONTH))
        landed = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
        assert landed.get_requested_partitions(AssetKey(PREDICTION_OUTCOMES)) == {MONTH}


def test_a_normal_day_is_scored_per_version_and_raises_no_drift(database, settings, model_store,
                                                                capsys):
    flights = june_flights(settings)
    day = flights[(flights["FlightDate"] == NORMAL_DAY) & flights["DepDelay"].notna()]
    nowhere = day.iloc[:1].assign(FlightNum="99999")  # a flight no one flies
    documents = store_answers(database, settings, pd.concat([day, nowhere]))
    metadata, check = materialize_outcomes(settings, database, model_store)

    # What the metadata must say, computed here from the documents and the flights.
    answers = pd.DataFrame([{**d, "ChallengerPrediction": d["Shadow"][0]["Prediction"]}
                            for d in documents])
    joined = answers.merge(flights[["FlightDate", "Carrier", "FlightNum", "Origin", "Dest",
                                    "ArrDelay"]], how="left")
    arrived = joined[joined["ArrDelay"].notna()]
    actual = arrived["ArrDelay"].map(bucket)
    diverted = int((day["ArrDelay"].isna()).sum())
    assert diverted > 0  # the day has flights that left but never arrived where they were due
    assert metadata["answers"] == len(documents) == len(day) + 1
    assert metadata["answers_matched"] == len(arrived) == len(day) - diverted
    assert metadata["answers_unmatched"] == diverted + 1
    assert metadata["unmatched_by_reason"] == {
        "no such flight": 1, "no arrival delay (cancelled or diverted)": diverted,
        "ambiguous (several flights share the identity)": 0}

    by_version = {row["ModelVersion"]: row for row in records(metadata["accuracy_by_version"])}
    champion = documents[0]["ModelVersion"]
    champion_accuracy = (arrived["Prediction"] == actual).mean()
    challenger_accuracy = (arrived["ChallengerPrediction"] == actual).mean()
    assert by_version[champion]["Matched"] == by_version[CHALLENGER]["Matched"] == len(arrived)
    assert by_version[champion]["Accuracy"] == pytest.approx(champion_accuracy, abs=1e-4)
    assert by_version[CHALLENGER]["Accuracy"] == pytest.approx(challenger_accuracy, abs=1e-4)
    assert by_version[CHALLENGER]["ServedAccuracySameRequests"] == pytest.approx(
        champion_accuracy, abs=1e-4)
    assert metadata["served_accuracy"] == pytest.approx(champion_accuracy, abs=1e-4)
    assert by_version[CHALLENGER]["OfflineAccuracy"] == CHALLENGER_ACCURACY
    assert by_version[champion]["OfflineAccuracy"] == pytest.approx(
        model_store.read_info(champion)["accuracy"], abs=1e-4)
    confusion = [row for row in records(metadata["confusion_matrix"])
                 if row["ModelVersion"] == champion]
    assert sum(row[f"Predicted {b}"] for row in confusion for b in range(4)) == len(arrived)
    calibration = [row for row in records(metadata["calibration"]) if row["ModelVersion"] == champion]
    assert [row["ObservedFrequency"] for row in calibration] == pytest.approx(
        [(actual == b).mean() for b in range(4)], abs=1e-4)

    # Which inputs each version leans on: the champion's answers are explained, the hand-made
    # challenger's are not, so it has no row.
    (leaning,) = records(metadata["mean_absolute_contribution_by_version"])
    expected = pd.DataFrame([dict(zip(d["Explanation"]["Features"], map(abs, d["Explanation"][
        "Contributions"]), strict=True)) for d in documents]).mean()
    assert leaning["ModelVersion"] == champion and leaning["ExplainedAnswers"] == len(documents)
    assert {k: leaning[k] for k in expected.index} == pytest.approx(expected.to_dict(), abs=1e-4)

    for chart in ("accuracy_by_day_chart", "calibration_chart"):
        image = metadata[chart].split("data:image/svg+xml;base64,")[1].split(")")[0]
        ElementTree.fromstring(base64.b64decode(image))  # a well-formed SVG document

    # The rows are stored: one per answer and version, in the month's partition.
    table = pq.read_table(Path(build_resources(settings)["warehouse"].table_path(PREDICTION_OUTCOMES))
                          / f"{MONTH_COLUMN}={MONTH}").to_pandas()
    assert len(table) == metadata["dagster/row_count"] == 2 * len(documents)
    assert (table["Outcome"] == "matched").sum() == 2 * len(arrived)

    with capsys.disabled():
        print(f"\n{NORMAL_DAY}, {len(documents)} answers: live accuracy {champion_accuracy:.3f} "
              f"(challenger {challenger_accuracy:.3f}), PSI {psi_figures(check)}")
    assert check.passed, check.description
    assert all(psi < settings.drift_psi_threshold for psi in psi_figures(check).values())


def test_only_late_departures_raise_drift_naming_dep_delay(database, settings, model_store,
                                                            capsys):
    flights = june_flights(settings)
    late = flights[flights["DepDelay"] > 60]
    store_answers(database, settings, late)
    metadata, check = materialize_outcomes(settings, database, model_store)
    with capsys.disabled():
        print(f"\n{MONTH}, {len(late)} flights with DepDelay > 60: PSI {psi_figures(check)}")
    assert metadata["answers"] == len(late)
    assert not check.passed
    assert check.severity == AssetCheckSeverity.WARN
    assert check.metadata["features_over_threshold"].value == ["DepDelay"]
    assert "DepDelay" in check.description
    assert check.asset_check_key.name == DRIFT_CHECK
