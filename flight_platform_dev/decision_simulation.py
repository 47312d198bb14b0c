"""Simulated paired outcomes for the live decision rule (flight_platform.core.live_decisions):
sequences of flights judged for a champion and a challenger, the rule looked at after every batch.
Used by its unit tests and printed by benchmarks/live_decisions.py; and made-up outcomes tables
for the reviews of the champion (batch.champion)."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from flight_platform.core.live_decisions import DecisionRule, PairedOutcomes, Verdict, decide
from flight_platform.core.monitoring import BUCKETS, MATCHED


@dataclass(frozen=True)
class Simulated:
    sequences: int
    better: int  # sequences the rule decided "better" in (at the first verdict)
    worse: int
    outcomes_needed: list[int]  # paired outcomes at the first verdict, for each decided sequence

    @property
    def decided(self) -> int:
        return self.better + self.worse

    @property
    def median_needed(self) -> float:
        return float(np.median(self.outcomes_needed)) if self.outcomes_needed else float("nan")


def simulate(rule: DecisionRule, champion_accuracy: float, difference: float, discordant_share: float,
             sequences: int, batch: int, cap: int, seed: int) -> Simulated:
    """`sequences` runs of up to `cap` flights in batches of `batch`: on each flight exactly one of
    the two versions is right with probability `discordant_share`, the challenger's accuracy being
    the champion's + `difference`. The rule is looked at after every batch; the first verdict
    other than "not yet" ends a sequence."""
    generator = np.random.default_rng(seed)
    challenger_only = (discordant_share + difference) / 2
    champion_only = (discordant_share - difference) / 2
    both = champion_accuracy - champion_only
    if min(challenger_only, champion_only, both) < 0 or both + discordant_share > 1:
        raise ValueError("these accuracies, difference and discordant share are impossible")
    better = worse = 0
    needed = []
    for _ in range(sequences):
        # Per flight: 0 challenger only right, 1 champion only, 2 both, 3 neither.
        kinds = generator.choice(4, size=cap, p=[challenger_only, champion_only, both,
                                                 1 - both - discordant_share])
        counts = np.cumsum(np.eye(4, dtype=int)[kinds], axis=0)
        for looked in range(batch, cap + 1, batch):
            wins, losses, agreed, _ = counts[looked - 1]
            outcomes = PairedOutcomes(looked, int(wins), int(losses), int(wins + agreed),
                                      int(losses + agreed))
            verdict = decide({"challenger": outcomes}, rule)["challenger"].verdict
            if verdict is not Verdict.NOT_YET:
                better += verdict is Verdict.BETTER
                worse += verdict is Verdict.WORSE
                needed.append(looked)
                break
    return Simulated(sequences, better, worse, needed)


def simulated_outcomes(accuracies: dict[str, float], flights: int, seed: int) -> pd.DataFrame:
    """Each version right on each flight with its accuracy (independently), as prediction_outcomes
    stores matched answers: one row per flight and version."""
    generator = np.random.default_rng(seed)
    actual = generator.integers(0, BUCKETS, flights)
    rows = []
    for version, accuracy in accuracies.items():
        right = generator.random(flights) < accuracy
        predicted = np.where(right, actual, (actual + 1) % BUCKETS)
        rows.append(pd.DataFrame({
            "UUID": [f"r{i}" for i in range(flights)], "ModelVersion": version,
            "Prediction": predicted, "Probabilities": [np.eye(BUCKETS)[p] * 0.7 + 0.075 for p in predicted],
            "ActualBucket": actual, "Outcome": MATCHED}))
    return pd.concat(rows, ignore_index=True)
