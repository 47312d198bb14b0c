"""Live decisions acting on a model store (flight_platform.batch.champion), on outcomes made up
flight by flight: a better challenger is promoted, a copy of the champion never is, a worse
successor is rolled back, probation ends, and "recommend" and "off" change nothing."""

import logging

import pandas as pd
import pytest

from flight_platform.batch.champion import review_champion
from flight_platform.core.live_decisions import DecisionRule
from flight_platform.core.model_store import ModelStore
from flight_platform_dev.decision_simulation import simulated_outcomes as outcomes

RULE = DecisionRule(alpha=0.05, margin=0.01, min_pairs=1000)
LOG = logging.getLogger(__name__)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path)
    for version in ("weak", "strong", "copy"):
        store.pipeline_dir(version).mkdir(parents=True)
    store.promote("weak", "set up by the test", probation=False)
    store.add_challenger("strong", keep=2)
    store.add_challenger("copy", keep=2)
    return store


def review(store: ModelStore, judged: pd.DataFrame, mode: str = "apply", probation_pairs: int = 20_000):
    return review_champion(store, lambda versions: judged[judged["ModelVersion"].isin(versions)], mode,
                           RULE, probation_pairs, 14, LOG)


def test_a_better_challenger_is_promoted_and_a_worse_successor_rolled_back(store):
    weak_vs_strong = outcomes({"weak": 0.50, "strong": 0.58}, 6000, seed=1)
    # A copy scores every flight as the champion does.
    copy = weak_vs_strong[weak_vs_strong["ModelVersion"] == "weak"].assign(ModelVersion="copy")
    first = review(store, pd.concat([weak_vs_strong, copy]))
    assert first.actions == [first.actions[0]] and first.actions[0].startswith("promote strong over weak")
    verdicts = dict(zip(first.evidence["Challenger"], first.evidence["Verdict"], strict=True))
    assert verdicts == {"strong": "better", "copy": "not yet"}
    assert store.current_version() == "strong" and store.on_probation() == "weak"
    assert store.champions()[-1]["why_came"].startswith("promoted on 6,000 real flights: +")

    # Later flights: the successor does worse than the champion it replaced.
    rolled_back = review(store, outcomes({"strong": 0.50, "weak": 0.58, "copy": 0.50}, 6000, seed=2))
    assert rolled_back.actions[0].startswith("restore weak in place of strong")
    assert store.current_version() == "weak" and store.on_probation() is None
    assert "strong" not in store.challengers()
    assert store.champions()[-1]["why_came"].startswith("restored: strong was")


def test_not_yet_while_too_few_flights_then_probation_ends(store):
    store.promote("strong", "set up by the test", probation=True)
    few = review(store, outcomes({"strong": 0.56, "weak": 0.56, "copy": 0.56}, 500, seed=3))
    assert set(few.evidence["Verdict"]) == {"not yet"} and few.actions == []
    assert few.evidence.set_index("Challenger").loc["weak", "OnProbation"]
    ended = review(store, outcomes({"strong": 0.56, "weak": 0.56, "copy": 0.56}, 3000, seed=4),
                   probation_pairs=2000)
    assert ended.actions == ["end the probation of weak: 3,000 flights judged (probation: 2,000)"]
    assert store.on_probation() is None and store.challengers() == ["copy"]


@pytest.mark.parametrize("mode", ["recommend", "off"])
def test_recommend_records_the_decision_and_off_tests_nothing_neither_changes_the_store(store, mode):
    result = review(store, outcomes({"weak": 0.50, "strong": 0.58, "copy": 0.50}, 6000, seed=1), mode)
    if mode == "recommend":
        assert result.actions[0].startswith("recommended: promote strong over weak")
        assert "better" in set(result.evidence["Verdict"])
    else:
        assert result.actions == [] and result.evidence.empty
    assert store.current_version() == "weak" and store.challengers() == ["strong", "copy"]
