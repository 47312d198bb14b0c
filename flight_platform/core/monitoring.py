"""Live model monitoring: stored answers joined with what happened, per-version metrics, and drift.

Pure functions on pandas frames and NumPy arrays (no Dagster, no Spark), used by the
`prediction_outcomes` asset and its drift check (flight_platform.batch.outcomes) and unit-tested
without services.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from flight_platform.core.features import ARRIVAL_DELAY_LABELS, ARRIVAL_DELAY_SPLITS
from flight_platform.core.live_decisions import PairedOutcomes, paired_outcomes

BUCKETS = len(ARRIVAL_DELAY_LABELS)
# What identifies a flight in a request. The schedule time that would tell apart two flights of
# one number on one route and day is not asked for, so such flights are ambiguous (join_outcomes).
FLIGHT_KEY = ["FlightDate", "Carrier", "FlightNum", "Origin", "Dest"]
REQUEST_COLUMNS = ["UUID", *FLIGHT_KEY, "DepDelay", "Distance", "Route"]
# Contributions: {input: contribution to the predicted bucket} of an explained answer, else None.
ANSWER_COLUMNS = [*REQUEST_COLUMNS, "ModelVersion", "Role", "Prediction", "Probabilities",
                  "Contributions"]

CHAMPION = "champion"  # the version that served the answer
CHALLENGER = "challenger"  # a version scored in its shadow (the document's Shadow list)

# An answer's Outcome: matched to its flight's actual arrival delay bucket, or why not.
MATCHED = "matched"
NO_SUCH_FLIGHT = "no such flight"
NO_ARRIVAL_DELAY = "no arrival delay (cancelled or diverted)"
AMBIGUOUS_FLIGHT = "ambiguous (several flights share the identity)"
UNMATCHED = [NO_SUCH_FLIGHT, NO_ARRIVAL_DELAY, AMBIGUOUS_FLIGHT]

# Drift binning. A sample of n requests drawn from the training population itself has a PSI of
# about (k - 1) / n over k bins (sampling noise): a bin per route (~200) put the ~900 requests of
# each June 2013 day at 0.04-0.16 by chance. Hence deciles for numbers and, for categories, the
# most frequent few.
NUMERIC_BINS = 10
TOP_CATEGORIES = 10
# Stands in for an empty bin's share (ln 0 is undefined): requests in a bin training never filled
# (unseen categories) then weigh in heavily, and a bin the requests left empty counts, finitely.
EMPTY_SHARE = 1e-4


def arrival_delay_bucket(arr_delay: pd.Series) -> pd.Series:
    """The label of each ArrDelay, with Spark's Bucketizer semantics (bucket i holds
    splits[i] <= delay < splits[i + 1]); a missing delay has no bucket (<NA>)."""
    inner_splits = np.asarray(ARRIVAL_DELAY_SPLITS[1:-1])
    buckets = np.searchsorted(inner_splits, arr_delay.to_numpy(dtype=float), side="right")
    return pd.Series(buckets, index=arr_delay.index, dtype="Int64").mask(arr_delay.isna())


def _version_columns(role: str, scored: Mapping[str, Any]) -> dict[str, Any]:
    by_bucket = sorted(scored["Probabilities"], key=lambda p: p["Bucket"])
    explanation = scored.get("Explanation")
    return {"ModelVersion": scored["ModelVersion"], "Role": role, "Prediction": scored["Prediction"],
            "Probabilities": [p["Probability"] for p in by_bucket],
            "Contributions": dict(zip(explanation["Features"], explanation["Contributions"], strict=True))
            if explanation else None}


def answer_rows(documents: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per stored answer and model version: the champion's served prediction and each
    challenger's shadow prediction of the same request (documents stored before challengers
    existed have no Shadow). Probabilities are listed by bucket."""
    rows = [
        {**{name: document[name] for name in REQUEST_COLUMNS}, **_version_columns(role, scored)}
        for document in documents
        for role, scored in [(CHAMPION, document),
                             *((CHALLENGER, shadow) for shadow in document.get("Shadow") or [])]
    ]
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def join_outcomes(answers: pd.DataFrame, flights: pd.DataFrame) -> pd.DataFrame:
    """`answers` with the actual ArrDelay of their flight, its bucket (ActualBucket) and Outcome.

    `flights` holds FLIGHT_KEY (FlightDate as 'YYYY-MM-DD', as requests have it) and ArrDelay. An
    answer is unmatched when no flight has its identity, when its flight has no arrival delay
    (cancelled or diverted), or when several flights share the identity: a request does not say
    which of them it meant, so none is guessed."""
    flights_per_key = flights.groupby(FLIGHT_KEY, as_index=False).agg(
        Flights=("ArrDelay", "size"), ArrDelay=("ArrDelay", "first"))
    joined = answers.merge(flights_per_key, on=FLIGHT_KEY, how="left", validate="many_to_one")
    outcome = np.select(
        [joined["Flights"].isna(), joined["Flights"] > 1, joined["ArrDelay"].isna()],
        [NO_SUCH_FLIGHT, AMBIGUOUS_FLIGHT, NO_ARRIVAL_DELAY], MATCHED)
    joined["ArrDelay"] = joined["ArrDelay"].where(outcome == MATCHED)
    joined["ActualBucket"] = arrival_delay_bucket(joined["ArrDelay"])
    joined["Outcome"] = outcome
    return joined.drop(columns="Flights")


def matched(outcomes: pd.DataFrame) -> pd.DataFrame:
    return outcomes[outcomes["Outcome"] == MATCHED]


def confusion_matrix(actual: pd.Series, predicted: pd.Series) -> np.ndarray:
    """Counts of (actual bucket, predicted bucket): rows actual, columns predicted."""
    matrix = np.zeros((BUCKETS, BUCKETS), dtype=int)
    np.add.at(matrix, (actual.to_numpy(dtype=int), predicted.to_numpy(dtype=int)), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    return float(np.trace(matrix) / matrix.sum()) if matrix.sum() else float("nan")


def weighted_f1(matrix: np.ndarray) -> float:
    """Each actual bucket's F1 weighted by its share of the answers, with F1 0 where precision or
    recall is undefined: Spark's weightedFMeasure, the offline figure in model.json."""
    hits, actual, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(BUCKETS), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros(BUCKETS), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(BUCKETS),
                   where=precision + recall > 0)
    return float((f1 * actual).sum() / actual.sum()) if actual.sum() else float("nan")


def version_metrics(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per model version: its roles, answers, matched answers, live accuracy and weighted F1, and
    the accuracy of the answers actually served on the same requests (a challenger's fair
    comparison: equal to Accuracy for a version that only served)."""
    scored = matched(outcomes)
    served = scored[scored["Role"] == CHAMPION].set_index("UUID")
    rows = []
    for version, answers in outcomes.groupby("ModelVersion"):
        version_scored = scored[scored["ModelVersion"] == version]
        matrix = confusion_matrix(version_scored["ActualBucket"], version_scored["Prediction"])
        served_same = served.loc[version_scored["UUID"]]
        rows.append({
            "ModelVersion": version,
            "Roles": ", ".join(sorted(answers["Role"].unique())),
            "Answers": len(answers),
            "Matched": len(version_scored),
            "Accuracy": accuracy(matrix),
            "WeightedF1": weighted_f1(matrix),
            "ServedAccuracySameRequests": accuracy(
                confusion_matrix(served_same["ActualBucket"], served_same["Prediction"])),
        })
    return pd.DataFrame(rows, columns=["ModelVersion", "Roles", "Answers", "Matched", "Accuracy",
                                       "WeightedF1", "ServedAccuracySameRequests"])


def confusion_by_version(outcomes: pd.DataFrame) -> dict[str, np.ndarray]:
    return {version: confusion_matrix(rows["ActualBucket"], rows["Prediction"])
            for version, rows in matched(outcomes).groupby("ModelVersion")}


def mean_absolute_contributions(answers: pd.DataFrame) -> pd.DataFrame:
    """Per model version, over its explained answers (matched to a flight or not): how many, and
    the mean absolute contribution of each input to the predicted bucket, which says which inputs
    the version leans on. Inputs in columns, the most leaned on first; answers stored without an
    explanation are left out."""
    explained = answers[answers["Contributions"].notna()]
    if explained.empty:
        return pd.DataFrame(columns=["ModelVersion", "ExplainedAnswers"])
    by_input = pd.DataFrame(explained["Contributions"].to_list(), index=explained.index).abs()
    means = by_input.groupby(explained["ModelVersion"]).mean()
    means = means[means.mean().sort_values(ascending=False).index]
    counts = explained.groupby("ModelVersion").size().rename("ExplainedAnswers")
    return pd.concat([counts, means], axis=1).reset_index()


def calibration(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per version and bucket, over matched answers: the mean probability the version gave the
    bucket, and how often the bucket actually happened. Equal for a calibrated model."""
    rows = []
    for version, answers in matched(outcomes).groupby("ModelVersion"):
        predicted = np.vstack(answers["Probabilities"].to_list()).mean(axis=0)
        observed = np.bincount(answers["ActualBucket"].to_numpy(dtype=int),
                               minlength=BUCKETS) / len(answers)
        rows += [{"ModelVersion": version, "Bucket": bucket,
                  "MeanPredictedProbability": float(predicted[bucket]),
                  "ObservedFrequency": float(observed[bucket])} for bucket in range(BUCKETS)]
    return pd.DataFrame(rows, columns=["ModelVersion", "Bucket", "MeanPredictedProbability",
                                       "ObservedFrequency"])


def daily_accuracy(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per flight date and version: matched answers and live accuracy."""
    scored = matched(outcomes).assign(
        Correct=lambda rows: rows["Prediction"] == rows["ActualBucket"])
    return (scored.groupby(["FlightDate", "ModelVersion"], as_index=False)
            .agg(Matched=("Correct", "size"), Accuracy=("Correct", "mean")))


def population_stability_index(expected_shares: np.ndarray, actual_shares: np.ndarray) -> float:
    """PSI = sum over bins of (actual - expected) * ln(actual / expected), empty bins counted as
    EMPTY_SHARE. 0 for identical distributions; above 0.2 is the usual 'significant shift'."""
    expected = np.maximum(expected_shares, EMPTY_SHARE)
    actual = np.maximum(actual_shares, EMPTY_SHARE)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def decile_edges(training: pd.Series) -> np.ndarray:
    """The inner bin edges of a numeric feature: its training deciles (values it has, not
    interpolations), each once. Ties (DepDelay is in whole minutes, Distance has one value per
    route) make equal deciles, and a bin between two equal edges could never hold anything."""
    return np.unique(np.quantile(training.to_numpy(dtype=float),
                                 np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1], method="inverted_cdf"))


def numeric_shares(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    """Share of `values` in each bin [edge i-1, edge i), with open-ended first and last bins."""
    bins = np.searchsorted(edges, values.to_numpy(dtype=float), side="right")
    return np.bincount(bins, minlength=len(edges) + 1) / len(values)


def category_shares(values: pd.Series, top: list[str], known: set[str]) -> np.ndarray:
    """Share of `values` in each of the `top` categories, then in 'other' (a training category
    outside the top), then in 'unseen' (never in training)."""
    seen, in_top = values.isin(known), values.isin(top)
    counts = [*((values == category).sum() for category in top), (seen & ~in_top).sum(),
              (~seen).sum()]
    return np.asarray(counts) / len(values)


def feature_drift(training: pd.DataFrame, served: pd.DataFrame, numeric: list[str],
                  categorical: list[str]) -> pd.DataFrame:
    """Per feature, the PSI of the `served` requests against the `training` rows, with its bins:
    numeric features by training deciles, categorical ones by their TOP_CATEGORIES most frequent
    training categories plus 'other' and 'unseen'. Unseen counts the served requests whose
    category training never had (the model cannot tell them apart)."""
    rows = []
    for feature in numeric:
        edges = decile_edges(training[feature])
        rows.append({"Feature": feature, "Binning": "training deciles", "Bins": len(edges) + 1,
                     "PSI": population_stability_index(numeric_shares(training[feature], edges),
                                                       numeric_shares(served[feature], edges)),
                     "Unseen": 0})
    for feature in categorical:
        frequencies = training[feature].value_counts()
        top, known = frequencies.index[:TOP_CATEGORIES].tolist(), set(frequencies.index)
        expected = category_shares(training[feature], top, known)
        actual = category_shares(served[feature], top, known)
        rows.append({"Feature": feature,
                     "Binning": f"{len(top)} most frequent in training, other, unseen",
                     "Bins": len(expected), "PSI": population_stability_index(expected, actual),
                     "Unseen": int((~served[feature].isin(known)).sum())})
    return pd.DataFrame(rows, columns=["Feature", "Binning", "Bins", "PSI", "Unseen"])


def brier_scores(outcomes: pd.DataFrame) -> np.ndarray:
    """Each matched row's multiclass Brier score: the squared distance of its probabilities from
    the actual bucket's indicator (0 best, 2 worst)."""
    probabilities = np.array(outcomes["Probabilities"].tolist(), dtype=float).reshape(-1, BUCKETS)
    actual = np.eye(BUCKETS)[outcomes["ActualBucket"].to_numpy(dtype=int)]
    return ((probabilities - actual) ** 2).sum(axis=1)


def paired_by_version(outcomes: pd.DataFrame, champion: str,
                      challengers: Iterable[str]) -> dict[str, PairedOutcomes]:
    """Each challenger and the champion judged on the matched flights both scored (whichever of
    them served the answer: roles change with promotions, the requests they shared do not)."""
    scored = matched(outcomes).drop_duplicates(["UUID", "ModelVersion"])
    scored = scored.assign(Right=scored["Prediction"] == scored["ActualBucket"],
                           Brier=brier_scores(scored) if len(scored) else [])
    by_version = {version: rows.set_index("UUID")[["Right", "Brier"]]
                  for version, rows in scored.groupby("ModelVersion")}
    empty = pd.DataFrame({"Right": pd.Series(dtype=bool), "Brier": pd.Series(dtype=float)})
    base = by_version.get(champion, empty)
    paired = {}
    for challenger in challengers:
        both = by_version.get(challenger, empty).join(base, how="inner", lsuffix="Challenger",
                                                       rsuffix="Champion")
        paired[challenger] = paired_outcomes(
            both["RightChallenger"].to_numpy(bool), both["RightChampion"].to_numpy(bool),
            (both["BrierChallenger"] - both["BrierChampion"]).to_numpy(float))
    return paired
