"""The operator jobs that choose the champion and the challengers, run with Dagster on a real
(temporary) instance and model store."""

from dagster import instance_for_test

from flight_platform.core.model_store import ModelStore
from flight_platform.resources import ModelStoreResource
from flight_platform.streaming.model_roles import manage_challengers, promote_model


def saved_store(tmp_path, versions: list[str]) -> ModelStore:
    store = ModelStore(tmp_path)
    for version in versions:
        store.pipeline_dir(version).mkdir(parents=True)
    store.promote(versions[0], "set up by the test", probation=False)
    return store


def run(job, store: ModelStore, config: dict, max_challengers: int = 2):
    with instance_for_test() as instance:
        return job.execute_in_process(
            run_config={"ops": {job.graph.node_defs[0].name: {"config": config}}},
            resources={"model_store": ModelStoreResource(root=str(store.root),
                                                         max_challengers=max_challengers)},
            instance=instance, raise_on_error=False)


def failure_message(result) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def test_promote_model_makes_a_challenger_the_champion(tmp_path):
    store = saved_store(tmp_path, ["v1", "v2", "v3"])
    store.add_challenger("v2", keep=2)
    store.add_challenger("v3", keep=2)
    assert run(promote_model, store, {"version": "v2"}).success
    # The champion it replaced is scored beside it on probation (live outcomes may restore it).
    assert store.current_version() == "v2" and store.challengers() == ["v3", "v1"]
    assert store.on_probation() == "v1"
    assert store.champions()[-1]["why_came"].startswith("promoted by a person (run ")


def test_promote_model_refuses_an_unknown_version(tmp_path):
    store = saved_store(tmp_path, ["v1"])
    result = run(promote_model, store, {"version": "v9"})
    assert not result.success
    assert "No saved model version v9; saved versions: v1" in failure_message(result)
    assert store.current_version() == "v1"


def test_manage_challengers_adds_removes_and_keeps_the_limit(tmp_path):
    store = saved_store(tmp_path, ["v1", "v2", "v3", "v4"])
    assert run(manage_challengers, store, {"add": ["v2", "v3"]}).success
    assert store.challengers() == ["v2", "v3"]
    assert run(manage_challengers, store, {"add": ["v4"], "remove": ["v2"]}).success
    assert store.challengers() == ["v3", "v4"]
    assert run(manage_challengers, store, {"add": ["v2"]}, max_challengers=1).success
    assert store.challengers() == ["v2"]


def test_manage_challengers_refuses_the_champion_and_unknown_versions(tmp_path):
    store = saved_store(tmp_path, ["v1", "v2"])
    champion = run(manage_challengers, store, {"add": ["v1"]})
    assert not champion.success and "is the champion" in failure_message(champion)
    unknown = run(manage_challengers, store, {"add": ["v2", "nope"]})
    assert not unknown.success and "No saved model version nope" in failure_message(unknown)
    assert store.challengers() == []
