"""The live decision rule (flight_platform.core.live_decisions) on simulated paired outcomes, and
what a review of the champion costs.

    .venv/bin/python -m benchmarks.live_decisions [--sequences 1000]

1. False decisions: with no true difference, the share of sequences in which the rule ever
   decides "better" or "worse", looked at after every BATCH judged flights up to CAP.
2. Power: with a true difference of one and two margins, the share decided "better" and the
   judged flights it took (median, 90th percentile), for 10% / 20% / 30% of flights discordant.
3. Cost: `review_champion` on a frame of 1,000,000 outcomes (a champion and two challengers on
   ~333,000 flights each), the median of a few runs.

Prints figures; asserts nothing (the unit tests assert the error rate).
"""

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from flight_platform.batch.champion import review_champion
from flight_platform.core.live_decisions import DecisionRule
from flight_platform.core.model_store import ModelStore
from flight_platform_dev.decision_simulation import simulate, simulated_outcomes

BATCH, CAP, ACCURACY = 250, 40_000, 0.56


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=1000)
    args = parser.parse_args()
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
            review = review_champion(store, frame, "recommend", rule, 20_000, 14,
                                     logging.getLogger("benchmark"))
            timings.append(time.perf_counter() - started)
    print(f"review_champion on {len(frame):,} outcomes: {statistics.median(timings):.2f} s "
          f"(median of 3); {review.actions or 'no action'}")


if __name__ == "__main__":
    main()
