"""The loop closed end to end on a whole private stack, as `make run` runs it: a model trained on a
window of months that leaves June out is promoted with the promote_model job and rolled out, two
challengers are scored beside it, a real June day is replayed through Kafka with
`flight_platform.replay`, and `prediction_outcomes` (materialized with `dg launch`) judges
every version on what the flights really did. A replay of late departures raises the drift alarm.
Then live outcomes decide the champion on replayed days: a weak champion is replaced without a
person, and a person's worse choice is rolled back."""

import datetime as dt
import json
import logging
import re
import shutil

import pytest
from dagster import AssetKey, DagsterInstance

from flight_platform.batch.champion import review_champion
from flight_platform.batch.outcomes import read_outcomes_of
from flight_platform.clients.mongo import RESPONSES
from flight_platform.core.live_decisions import DecisionRule
from flight_platform.core.model_store import ModelStore
from flight_platform.local.processes import wait_until
from flight_platform.replay import Selection, replay_day
from flight_platform.resources import build_resources
from flight_platform.warehouse import DRIFT_CHECK, PREDICTION_OUTCOMES
from flight_platform_dev.dagster_runs import run_cli
from flight_platform_dev.platform import PrivatePlatform, rolled_out

pytestmark = [pytest.mark.services, pytest.mark.faults, pytest.mark.timeout(1200)]
WINDOW = 6  # months: July to December 2013
NORMAL_DAY = dt.date(2013, 6, 21)  # departure delays close to the year's (see test_outcomes)


def launch(platform: PrivatePlatform, *args: str, config: dict | None = None) -> None:
    """`dg launch` against the platform, as an operator runs a job or a materialization."""
    if config is not None:
        path = platform.log_dir / "run_config.json"
        path.write_text(json.dumps(config))
        args = (*args, "-c", str(path))
    result = run_cli("dg", "launch", *args, "-m", "flight_platform.definitions", env=platform.env)
    assert result.returncode == 0, result.stderr[-3000:]


def train(platform: PrivatePlatform, **config) -> str:
    """A new model version on the latest WINDOW months; returns its version."""
    store = ModelStore(platform.settings.model_store_dir)
    before = set(store.versions())
    path = platform.log_dir / "training.json"
    path.write_text(json.dumps({"ops": {"flight_delay_model": {"config": {
        "recent_months": WINDOW, **config}}}}))
    # A candidate kept as a challenger fails its blocking check: the command exits non-zero.
    run_cli("dg", "launch", "--assets", "flight_delay_model", "-c", str(path),
            "-m", "flight_platform.definitions", env=platform.env)
    (version,) = set(store.versions()) - before
    return version


def outcomes(instance: DagsterInstance, month: str) -> tuple[dict, object]:
    """The latest prediction_outcomes metadata of `month` and its drift check's evaluation."""
    event = instance.get_latest_materialization_event(AssetKey(PREDICTION_OUTCOMES))
    assert event.asset_materialization.partition == month
    (check,) = [e.dagster_event.event_specific_data for e in instance.all_logs(event.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.check_name == DRIFT_CHECK
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}, check


def by_version(metadata: dict) -> dict[str, dict]:
    return {r.data["ModelVersion"]: r.data for r in metadata["accuracy_by_version"].records}


@pytest.fixture(scope="module")
def models(platform) -> tuple[str, str, str]:
    """(the year's model, trained on every month, June included; a small one, 3 shallow trees;
    one trained on the WINDOW months, June left out)"""
    store = ModelStore(platform.settings.model_store_dir)
    year_model = store.current_version()
    small = train(platform, num_trees=3, max_depth=4)
    assert store.challengers()[-1] == small  # sound but weaker: a challenger by itself
    return year_model, small, train(platform)


def promote(platform: PrivatePlatform, version: str) -> None:
    launch(platform, "--job", "promote_model",
           config={"ops": {"promote_version": {"config": {"version": version}}}})


def test_a_replayed_day_is_judged_per_model_and_late_departures_raise_drift(platform, models, capsys):
    store = ModelStore(platform.settings.model_store_dir)
    year_model, small, window_model = models
    promote(platform, window_model)
    launch(platform, "--job", "manage_challengers", config={"ops": {
        "update_challengers": {"config": {"add": [year_model], "remove": []}}}})
    assert store.current_version() == window_model
    assert store.challengers() == [small, year_model]  # the year's model on probation, re-added
    assert "2013-06" not in store.read_info(window_model)["months"]
    with platform.instance() as instance:
        wait_until(lambda: rolled_out(instance, window_model, 1, challengers=[small, year_model]), 300,
                   "the promoted model and its challengers to be rolled out")
        # Only the replayed day is judged: the stack's start-up probe (a random 2013 date, answered
        # by the models serving then) may have landed in June too.
        platform.database[RESPONSES].delete_many({})

        day = replay_day(platform.settings, NORMAL_DAY, rate=0, wait_s=300)
        assert day.sent > 900 and day.answered == day.sent, day.report()
        assert set(day.model_versions) == {window_model}
        launch(platform, "--assets", PREDICTION_OUTCOMES, "--partition", "2013-06")
        metadata, drift = outcomes(instance, "2013-06")
        versions = by_version(metadata)
        with capsys.disabled():
            print(f"\n{day.report()}\nlive vs offline accuracy: " + "; ".join(
                f"{v}: {row['Accuracy']:.3f} vs {row['OfflineAccuracy']:.3f}"
                for v, row in versions.items()))
            print(f"drift on {NORMAL_DAY}: {drift.description}")
        # Every version judged on the same matched answers...
        assert set(versions) == {window_model, small, year_model}
        assert len({row["Matched"] for row in versions.values()}) == 1
        assert metadata["answers_matched"] > 0.95 * day.sent
        # ...and the served model, which never saw June, as accurate live as offline.
        live, offline = versions[window_model]["Accuracy"], versions[window_model]["OfflineAccuracy"]
        assert abs(live - offline) <= 0.05, (live, offline)
        assert drift.passed, drift.description

        late = [replay_day(platform.settings, dt.date(2013, 7, d), Selection(min_dep_delay=60),
                           rate=0, wait_s=300) for d in range(1, 11)]
        assert sum(r.answered for r in late) >= 300
        launch(platform, "--assets", PREDICTION_OUTCOMES, "--partition", "2013-07")
        _, alarm = outcomes(instance, "2013-07")
        with capsys.disabled():
            print(f"drift, July 1-10 departures over 60 min late: {alarm.description}")
        assert not alarm.passed and alarm.severity.value == "WARN"
        assert alarm.metadata["features_over_threshold"].value == ["DepDelay"]
        assert re.search(r"DepDelay", alarm.description)


def judge_june(platform: PrivatePlatform, instance: DagsterInstance) -> dict:
    """Materialize June's outcomes (which runs the live decisions); their metadata."""
    launch(platform, "--assets", PREDICTION_OUTCOMES, "--partition", "2013-06")
    return outcomes(instance, "2013-06")[0]


def replay_until_replaced(platform: PrivatePlatform, instance: DagsterInstance, champion: str,
                          days: list[dt.date]) -> tuple[dict, list[dict[str, dict]]]:
    """Replay `days` one by one, judging June after each, until `champion` is replaced; the last
    metadata and, per look, each challenger's row of the decisions (its pairs, verdict, and how
    many more pairs it was predicted to need)."""
    store = ModelStore(platform.settings.model_store_dir)
    looks = []
    for day in days:
        summary = replay_day(platform.settings, day, rate=0, wait_s=300)
        assert summary.answered == summary.sent, summary.report()
        metadata = judge_june(platform, instance)
        looks.append({r.data["Challenger"]: r.data for r in metadata["live_decisions"].records})
        if store.current_version() != champion:
            return metadata, looks
    raise AssertionError(f"{champion} still serves after {len(days)} days: {looks}")


def assert_decided_as_predicted(looks: list[dict[str, dict]], version: str) -> None:
    """`version` was decided no later than the first look its earlier prediction (pairs so far +
    more needed) was reached at: the rule's "not yet" says how long to wait."""
    first = looks[0][version]
    if len(looks) > 1 and first["MorePairsNeeded"] is not None:
        predicted = first["Pairs"] + first["MorePairsNeeded"]
        reached = next(i for i, look in enumerate(looks) if look[version]["Pairs"] >= predicted or
                       i == len(looks) - 1)
        assert len(looks) - 1 <= reached, (predicted, looks)


def timeline(looks: list[dict[str, dict]]) -> str:
    return " | ".join("; ".join(f"{v}: {r['Verdict']} on {r['Pairs']:,} pairs, {r['MorePairsNeeded']} more"
                                for v, r in look.items()) for look in looks)


def test_live_outcomes_promote_a_better_challenger_and_roll_back_a_worse_champion(platform, models, capsys):
    """A weak champion (the small model) is replaced without a person by the better of the two
    others, judged on replayed June days; its identical copy on probation is never restored. Then
    a person promotes the small model again, and live outcomes restore the champion it replaced."""
    store = ModelStore(platform.settings.model_store_dir)
    year_model, small, window_model = models
    copy = f"{small}-copy"
    shutil.copytree(store.version_dir(small), store.version_dir(copy))
    promote(platform, small)
    promote(platform, copy)  # the small model on probation: a copy of the champion
    assert store.on_probation() == small
    strong = {year_model, window_model}
    assert strong <= set(store.challengers())
    june = [dt.date(2013, 6, d) for d in (3, 4, 5, 6, 7)]
    with platform.instance() as instance:
        wait_until(lambda: rolled_out(instance, copy, 1, challengers=store.challengers()), 300,
                   "the weak champion and its challengers to be rolled out")
        metadata, looks = replay_until_replaced(platform, instance, copy, june)
        promoted = store.current_version()
        (action,) = metadata["live_decision_actions"]
        with capsys.disabled():
            print(f"\n{promoted} promoted after {len(looks)} replayed day(s): {action}\n"
                  f"looks: {timeline(looks)}")
        assert promoted in strong and action.startswith(f"promote {promoted} over {copy}")
        assert_decided_as_predicted(looks, promoted)
        assert {look[small]["Verdict"] for look in looks} == {"not yet"}  # the copy on probation
        assert store.champions()[-1]["why_came"].startswith("promoted on ")
        assert store.on_probation() == copy

        promote(platform, small)  # by a person: worse than the one it replaces
        assert store.on_probation() == promoted
        # "recommend" on the outcomes judged so far (the small model was scored beside the other
        # models all along): the rollback is recommended, and nothing changes.
        serving = (store.current_version(), store.challengers(), store.champions())
        settings = platform.settings
        recommended = review_champion(
            store, lambda versions: read_outcomes_of(build_resources(settings)["warehouse"], versions),
            "recommend", DecisionRule(settings.decision_alpha, settings.promotion_margin_points / 100,
                                      settings.decision_min_pairs),
            settings.probation_pairs, settings.probation_days, logging.getLogger(__name__))
        assert recommended.actions[0].startswith(f"recommended: restore {promoted} in place of {small}")
        assert (store.current_version(), store.challengers(), store.champions()) == serving
        wait_until(lambda: rolled_out(instance, small, 1, challengers=store.challengers()), 300,
                   "the person's choice to be rolled out")
        metadata, rollback_looks = replay_until_replaced(platform, instance, small, june[len(looks):])
        (action,) = metadata["live_decision_actions"]
        with capsys.disabled():
            print(f"{small} rolled back after {len(rollback_looks)} replayed day(s): {action}\n"
                  f"looks: {timeline(rollback_looks)}")
        assert_decided_as_predicted(rollback_looks, promoted)
        assert store.current_version() == promoted and action.startswith(f"restore {promoted}")
        assert store.champions()[-1]["why_came"].startswith(f"restored: {small} was")
