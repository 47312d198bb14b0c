"""The live decision rule (flight_platform.core.live_decisions) on simulated paired outcomes, and
what a review of the champion costs.

    .venv/bin/python -m benchmarks.live_decisions [--sequences 1000] [--warehouse DIR]

1. False decisions: with no true difference, the share of sequences in which the rule ever
   decides "better" or "worse", looked at after every BATCH judged flights up to CAP.
2. Power: with a true difference of one and two margins, the share decided "better" and the
   judged flights it took (median, 90th percentile), for 10% / 20% / 30% of flights discordant.
3. Cost: `review_champion` on a frame of 1,000,000 outcomes (a champion and two challengers on
   ~333,000 flights each), the median of a few runs.
4. With `--warehouse` (a platform's warehouse directory whose prediction_outcomes hold real judged
   answers, e.g. what test_closing_the_loop leaves in pytest's temporary directory): for every two
   versions that scored the same flights, the accuracy difference's and the Brier difference's
   z-scores on them. The pairs a test needs go with 1/z^2: (Brier z / accuracy z)^2 is how many
   times fewer pairs a test on the Brier score would need.

Prints figures; asserts nothing (the unit tests assert the error rate).
"""

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from flight_platform import warehouse
from flight_platform.batch.champion import review_champion
from flight_platform.core import monitoring
from flight_platform.core.live_decisions import DecisionRule
from flight_platform.core.model_store import ModelStore
from flight_platform.warehouse import PREDICTION_OUTCOMES
from flight_platform_dev.decision_simulation import simulate, simulated_outcomes

BATCH, CAP, ACCURACY = 250, 40_000, 0.56


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--warehouse", help="compare accuracy and Brier on these real outcomes")
    args = parser.parse_args()
    if args.warehouse:
        compare_on_real_outcomes(args.warehouse)
        return
    rule = DecisionRule()
    print(f"rule: alpha {rule.alpha}, margin {100 * rule.margin:g} point(s), at least "
          f"{rule.min_pairs:,} pairs; looked at every {BATCH} judged flights up to {CAP:,}")
    print(f"{'true difference':>16} {'discordant':>10} {'decided':>9} {'better':>7} {'worse':>6} "
          f"{'median pairs':>12} {'p90 pairs':>10}")
    for difference in (0.0, rule.margin, 2 * rule.margin):
        for discordant in (0.1, 0.2, 0.3):
            result = simulate(rule, ACCURACY, difference, discordant, args.sequences, BATCH, CAP,
                              seed=int(1000 * difference) + int(100 * discordant))
            p90 = np.percentile(result.outcomes_needed, 90) if result.outcomes_needed else float("nan")
            print(f"{100 * difference:>+15.0f}p {discordant:>10.0%} "
                  f"{result.decided / result.sequences:>9.1%} {result.better:>7} {result.worse:>6} "
                  f"{result.median_needed:>12,.0f} {p90:>10,.0f}")

    frame = simulated_outcomes({"champion": 0.56, "one": 0.57, "two": 0.58}, 333_334, seed=1)
    timings = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as root:
            store = ModelStore(Path(root))
            for version in ("champion", "one", "two"):
                store.pipeline_dir(version).mkdir(parents=True)
            store.promote("champion", "benchmark", probation=False)
            store.add_challenger("one", keep=2)
            store.add_challenger("two", keep=2)
            started = time.perf_counter()
            review = review_champion(store, lambda versions: frame, "recommend", rule, 20_000, 14,
                                     logging.getLogger("benchmark"))
            timings.append(time.perf_counter() - started)
    print(f"review_champion on {len(frame):,} outcomes: {statistics.median(timings):.2f} s "
          f"(median of 3); {review.actions or 'no action'}")


def compare_on_real_outcomes(warehouse_dir: str) -> None:
    judged = warehouse.read_table(warehouse_dir, PREDICTION_OUTCOMES, [
        "UUID", "ModelVersion", "Prediction", "Probabilities", "ActualBucket", "Outcome"]).to_pandas()
    versions = sorted(judged["ModelVersion"].unique())
    print(f"real outcomes: {len(judged):,} rows, {len(versions)} versions")
    print(f"{'challenger':>28} {'champion':>28} {'pairs':>6} {'diff':>6} {'acc z':>6} {'brier z':>7} "
          f"{'(brier z / acc z)^2':>19}")
    for champion, challenger in itertools.combinations(versions, 2):
        paired = monitoring.paired_by_version(judged, champion, [challenger])[challenger]
        if paired.pairs:
            ratio = (paired.brier_z / paired.accuracy_z) ** 2 if paired.accuracy_z else float("nan")
            print(f"{challenger:>28} {champion:>28} {paired.pairs:>6} {100 * paired.difference:>+5.1f}p "
                  f"{paired.accuracy_z:>6.2f} {paired.brier_z:>7.2f} {ratio:>19.2f}")


if __name__ == "__main__":
    main()
