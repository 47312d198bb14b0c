import pytest

from flight_platform.core.model_store import ModelStore


def save(store: ModelStore, version: str) -> None:
    store.pipeline_dir(version).mkdir(parents=True)
    store.write_info(version, {"version": version})


def test_promote_moves_the_pointer(tmp_path):
    store = ModelStore(tmp_path)
    assert store.current_version() is None
    save(store, "20260101T000000Z-a")
    save(store, "20260102T000000Z-b")
    store.promote("20260101T000000Z-a", "set up by the test", probation=False)
    assert store.current_version() == "20260101T000000Z-a"
    store.promote("20260102T000000Z-b", "set up by the test", probation=False)
    assert store.current_version() == "20260102T000000Z-b"
    assert store.read_info("20260102T000000Z-b") == {"version": "20260102T000000Z-b"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_an_incomplete_version_cannot_be_promoted(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.promote("missing", "set up by the test", probation=False)
    assert store.current_version() is None


def test_prune_keeps_the_newest_and_the_current(tmp_path):
    store = ModelStore(tmp_path)
    versions = [f"2026010{i}T000000Z-x" for i in range(1, 7)]
    for version in versions:
        save(store, version)
    # e.g. a newer model failed its checks and was never promoted
    store.promote(versions[0], "set up by the test", probation=False)
    deleted = store.prune(keep=3)
    assert deleted == versions[1:3]
    assert store.versions() == [versions[0], *versions[3:]]


def test_challengers_keep_the_newest_and_never_the_champion(tmp_path):
    store = ModelStore(tmp_path)
    versions = [f"2026010{i}T000000Z-x" for i in range(1, 5)]
    for version in versions:
        save(store, version)
    store.promote(versions[0], "set up by the test", probation=False)
    with pytest.raises(ValueError, match="champion"):
        store.add_challenger(versions[0], keep=2)
    with pytest.raises(FileNotFoundError):
        store.add_challenger("missing", keep=2)
    assert store.add_challenger(versions[1], keep=2) == []
    assert store.add_challenger(versions[2], keep=2) == []
    assert store.add_challenger(versions[3], keep=2) == [versions[1]]  # the oldest makes room
    assert store.challengers() == versions[2:]
    store.remove_challenger(versions[2])
    assert store.challengers() == [versions[3]]


def test_a_promoted_challenger_is_the_champion_only(tmp_path):
    store = ModelStore(tmp_path)
    for version in ("v1", "v2", "v3"):
        save(store, version)
    store.promote("v1", "set up by the test", probation=False)
    store.add_challenger("v2", keep=2)
    store.add_challenger("v3", keep=2)
    store.promote("v3", "set up by the test", probation=False)
    assert store.current_version() == "v3" and store.challengers() == ["v2"]


def test_prune_keeps_the_challengers(tmp_path):
    store = ModelStore(tmp_path)
    versions = [f"2026010{i}T000000Z-x" for i in range(1, 6)]
    for version in versions:
        save(store, version)
    store.promote(versions[-1], "set up by the test", probation=False)
    store.add_challenger(versions[0], keep=2)
    assert store.prune(keep=2) == versions[1:3]
    assert store.versions() == [versions[0], *versions[3:]]


def test_the_replaced_champion_is_on_probation_until_it_ends_and_every_champion_is_recorded(tmp_path):
    store = ModelStore(tmp_path)
    for version in ("v1", "v2", "v3"):
        save(store, version)
    store.promote("v1", "first", probation=True)
    assert store.on_probation() is None  # it replaced nothing
    store.add_challenger("v3", keep=1)
    store.promote("v2", "better", probation=True)
    assert store.challengers() == ["v3", "v1"]  # beyond the limit of one: probation is extra
    assert store.on_probation() == "v1"
    assert store.end_probation("done") == "v1" and store.challengers() == ["v3"]
    assert store.on_probation() is None and store.end_probation("again") is None
    store.promote("v3", "best", probation=False)
    assert store.challengers() == [] and store.on_probation() is None
    champions = store.champions()
    assert [(c["version"], c["why_came"], c["replaced"]) for c in champions] == [
        ("v1", "first", None), ("v2", "better", "v1"), ("v3", "best", "v2")]
    assert champions[0]["why_went"] == "replaced by v2: better" and "went" not in champions[-1]
    assert champions[1]["why_probation_ended"] == "done"
