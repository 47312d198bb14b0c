"""The pure monitoring functions (flight_platform.core.monitoring) on small hand-made examples."""

import math

import numpy as np
import pandas as pd
import pytest

from flight_platform.core import monitoring
from flight_platform.core.monitoring import (
    AMBIGUOUS_FLIGHT,
    CHALLENGER,
    CHAMPION,
    MATCHED,
    NO_ARRIVAL_DELAY,
    NO_SUCH_FLIGHT,
)


def probabilities(*values: float) -> list[dict]:
    return [{"Bucket": bucket, "Label": f"bucket {bucket}", "Probability": p}
            for bucket, p in enumerate(values)]


def document(uuid: str, flight_num: str, prediction: int, shadow: list[dict] | None = None,
             flight_date: str = "2013-06-21") -> dict:
    one_hot = [1.0 if bucket == prediction else 0.0 for bucket in range(4)]
    return {"_id": uuid, "UUID": uuid, "FlightDate": flight_date, "Carrier": "DL",
            "FlightNum": flight_num, "Origin": "JFK", "Dest": "ATL", "DepDelay": 5.0,
            "Distance": 760.0, "Route": "JFK-ATL", "Prediction": prediction,
            "Probabilities": probabilities(*one_hot), "ModelVersion": "v1",
            **({"Shadow": shadow} if shadow is not None else {})}


def test_arrival_delay_buckets_follow_spark_bucketizer():
    delays = pd.Series([-40.0, -15.0, -14.9, -0.1, 0.0, 29.9, 30.0, 300.0, np.nan])
    assert monitoring.arrival_delay_bucket(delays).tolist() == [0, 1, 1, 1, 2, 2, 3, 3, pd.NA]


def test_answer_rows_hold_the_champion_and_each_challenger():
    shadow = {"ModelVersion": "v2", "Prediction": 1,
              "Probabilities": list(reversed(probabilities(0.1, 0.6, 0.2, 0.1)))}
    rows = monitoring.answer_rows([document("a", "1", 2, [shadow]), document("b", "2", 0),
                                   document("c", "3", 0, shadow=[])])
    assert rows[["UUID", "ModelVersion", "Role", "Prediction"]].values.tolist() == [
        ["a", "v1", CHAMPION, 2], ["a", "v2", CHALLENGER, 1], ["b", "v1", CHAMPION, 0],
        ["c", "v1", CHAMPION, 0]]
    assert rows.loc[1, "Probabilities"] == [0.1, 0.6, 0.2, 0.1]  # ordered by bucket


def explained(document: dict, **contributions: float) -> dict:
    return {**document, "Explanation": {"Features": list(contributions),
                                        "Contributions": list(contributions.values())}}


def test_mean_absolute_contributions_per_version_leave_out_unexplained_answers():
    shadow = explained({"ModelVersion": "v2", "Prediction": 1,
                        "Probabilities": probabilities(0.1, 0.6, 0.2, 0.1)}, DepDelay=0.1, Carrier=-0.4)
    rows = monitoring.answer_rows([
        explained(document("a", "1", 2, [shadow]), DepDelay=0.3, Carrier=-0.1),
        explained(document("b", "2", 0), DepDelay=-0.1, Carrier=0.05),
        document("c", "3", 0)])  # stored before answers were explained
    leaning = monitoring.mean_absolute_contributions(rows).set_index("ModelVersion")
    assert leaning.to_dict("index") == {
        "v1": {"ExplainedAnswers": 2, "DepDelay": pytest.approx(0.2), "Carrier": pytest.approx(0.075)},
        "v2": {"ExplainedAnswers": 1, "DepDelay": pytest.approx(0.1), "Carrier": pytest.approx(0.4)}}
    assert list(leaning.columns) == ["ExplainedAnswers", "Carrier", "DepDelay"]  # most leaned on first


def test_join_matches_flights_and_says_why_not():
    flights = pd.DataFrame([
        ("2013-06-21", "DL", "1", "JFK", "ATL", -20.0),
        ("2013-06-21", "DL", "2", "JFK", "ATL", np.nan),  # cancelled
        ("2013-06-21", "DL", "3", "JFK", "ATL", 10.0),  # flight 3 twice on one day and route
        ("2013-06-21", "DL", "3", "JFK", "ATL", 45.0),
        ("2013-06-22", "DL", "4", "JFK", "ATL", 45.0),
    ], columns=[*monitoring.FLIGHT_KEY, "ArrDelay"])
    answers = monitoring.answer_rows([
        document("a", "1", 0), document("b", "1", 1),  # two requests for one flight
        document("c", "2", 0), document("d", "3", 2), document("e", "4", 3)])
    joined = monitoring.join_outcomes(answers, flights).set_index("UUID")
    assert joined["Outcome"].to_dict() == {"a": MATCHED, "b": MATCHED, "c": NO_ARRIVAL_DELAY,
                                           "d": AMBIGUOUS_FLIGHT, "e": NO_SUCH_FLIGHT}
    assert joined.loc[["a", "b"], "ActualBucket"].tolist() == [0, 0]
    assert joined.loc[["c", "d", "e"], "ActualBucket"].isna().all()
    assert joined.loc[["c", "d", "e"], "ArrDelay"].isna().all()


def outcomes_of(actual: list[int], predicted: list[int], version: str = "v1",
                role: str = CHAMPION) -> pd.DataFrame:
    return pd.DataFrame({
        "UUID": [f"r{i}" for i in range(len(actual))], "FlightDate": "2013-06-21",
        "ModelVersion": version, "Role": role, "Prediction": predicted,
        "Probabilities": [[0.25] * 4] * len(actual), "ActualBucket": actual, "Outcome": MATCHED})


def test_metrics_equal_a_hand_computed_example():
    actual, predicted = [0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 2, 2]
    matrix = monitoring.confusion_matrix(pd.Series(actual), pd.Series(predicted))
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert monitoring.accuracy(matrix) == pytest.approx(4 / 6)
    # F1 per actual bucket: 2/3 (P 1, R 1/2), 4/5 (P 2/3, R 1), 2/3 (P 1/2, R 1), 0 (never
    # predicted); weighted by 2, 2, 1, 1 answers.
    assert monitoring.weighted_f1(matrix) == pytest.approx((2 * 2 / 3 + 2 * 4 / 5 + 2 / 3) / 6)
    assert math.isnan(monitoring.accuracy(np.zeros((4, 4), dtype=int)))


def test_a_challenger_is_compared_with_the_served_answers_on_the_same_requests():
    champion = outcomes_of([0, 1, 2, 3], [0, 1, 0, 0])
    challenger = outcomes_of([0, 1, 2, 3], [0, 1, 2, 0], "v2", CHALLENGER).iloc[1:]  # r1..r3
    unmatched = outcomes_of([0], [0]).assign(UUID="r9", Outcome=NO_SUCH_FLIGHT, ActualBucket=None)
    metrics = monitoring.version_metrics(pd.concat([champion, challenger, unmatched]))
    assert metrics.set_index("ModelVersion").to_dict("index") == {
        "v1": {"Roles": CHAMPION, "Answers": 5, "Matched": 4, "Accuracy": 0.5,
               "WeightedF1": pytest.approx(monitoring.weighted_f1(monitoring.confusion_matrix(
                   pd.Series([0, 1, 2, 3]), pd.Series([0, 1, 0, 0])))),
               "ServedAccuracySameRequests": 0.5},
        "v2": {"Roles": CHALLENGER, "Answers": 3, "Matched": 3, "Accuracy": pytest.approx(2 / 3),
               "WeightedF1": pytest.approx(monitoring.weighted_f1(monitoring.confusion_matrix(
                   pd.Series([1, 2, 3]), pd.Series([1, 2, 0])))),
               "ServedAccuracySameRequests": pytest.approx(1 / 3)},
    }


def test_calibration_and_daily_accuracy():
    outcomes = outcomes_of([0, 1, 1], [0, 1, 0]).assign(
        Probabilities=[[0.5, 0.5, 0.0, 0.0], [0.1, 0.7, 0.2, 0.0], [0.6, 0.3, 0.1, 0.0]],
        FlightDate=["2013-06-21", "2013-06-21", "2013-06-22"])
    calibration = monitoring.calibration(outcomes)
    assert calibration["MeanPredictedProbability"].tolist() == pytest.approx([0.4, 0.5, 0.1, 0.0])
    assert calibration["ObservedFrequency"].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])
    daily = monitoring.daily_accuracy(outcomes)
    assert daily[["FlightDate", "Matched", "Accuracy"]].values.tolist() == [
        ["2013-06-21", 2, 1.0], ["2013-06-22", 1, 0.0]]


def test_psi_of_known_shares():
    same = np.array([0.2, 0.3, 0.5])
    assert monitoring.population_stability_index(same, same) == 0
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert monitoring.population_stability_index(np.array([0.5, 0.5]), np.array([0.25, 0.75])) \
        == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # An empty bin counts as EMPTY_SHARE instead of making the index infinite.
    assert monitoring.population_stability_index(np.array([0.5, 0.5]), np.array([1.0, 0.0])) \
        == pytest.approx(0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))


def test_numeric_drift_is_small_for_the_same_population_and_large_for_a_shift():
    rng = np.random.default_rng(7)
    training = pd.DataFrame({"DepDelay": rng.normal(0, 20, 50_000).round()})  # ties: whole minutes
    same = pd.DataFrame({"DepDelay": rng.normal(0, 20, 1_000).round()})
    shifted = pd.DataFrame({"DepDelay": rng.normal(60, 20, 1_000).round()})
    assert monitoring.feature_drift(training, training, ["DepDelay"], [])["PSI"][0] == 0
    assert monitoring.feature_drift(training, same, ["DepDelay"], [])["PSI"][0] < 0.05
    assert monitoring.feature_drift(training, shifted, ["DepDelay"], [])["PSI"][0] > 2


def test_duplicate_deciles_are_merged():
    training = pd.Series([0.0] * 60 + [1.0] * 20 + [2.0] * 20)  # deciles: 0 six times, 1, 1, 2
    edges = monitoring.decile_edges(training)
    assert edges.tolist() == [0.0, 1.0, 2.0]
    shares = monitoring.numeric_shares(training, edges)
    assert shares.tolist() == [0.0, 0.6, 0.2, 0.2]  # [-inf, 0) [0, 1) [1, 2) [2, inf)


def test_categories_bin_to_the_most_frequent_plus_other_and_unseen():
    # 12 routes, route i flown 100 - 5 i times: the 10 most frequent get a bin, 2 share 'other'.
    training = pd.DataFrame({"Route": [f"R{i}" for i in range(12) for _ in range(100 - 5 * i)]})
    drift = monitoring.feature_drift(training, training, [], ["Route"]).iloc[0]
    assert (drift["Bins"], drift["PSI"], drift["Unseen"]) == (12, 0, 0)
    # The two rare routes moving between themselves stay inside 'other': no drift seen.
    rare_swapped = training.replace({"R10": "R11"})
    assert monitoring.feature_drift(training, rare_swapped, [], ["Route"])["PSI"][0] == 0
    with_new = pd.concat([training, pd.DataFrame({"Route": ["NEW1", "NEW2"] * 50})])
    drift = monitoring.feature_drift(training, with_new, [], ["Route"]).iloc[0]
    assert drift["Unseen"] == 100
    assert drift["PSI"] > 0.2  # 10% of the requests in a bin training never filled


def test_many_categories_do_not_inflate_the_index_by_sampling_noise():
    # 200 equally frequent routes and 900 requests drawn from that very population: per-route
    # bins would give about (200 - 1) / 900 = 0.22 from noise alone.
    rng = np.random.default_rng(11)
    training = pd.DataFrame({"Route": rng.integers(0, 200, 200_000).astype(str)})
    served = pd.DataFrame({"Route": rng.integers(0, 200, 900).astype(str)})
    assert monitoring.feature_drift(training, served, [], ["Route"])["PSI"][0] < 0.05
