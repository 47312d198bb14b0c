"""The live decision rule (flight_platform.core.live_decisions) on simulated paired outcomes: its
false-decision rate under continuous monitoring, its power, and its bookkeeping."""

from flight_platform.core.live_decisions import (
    DecisionRule,
    PairedOutcomes,
    Verdict,
    decide,
    holm_rejects,
    p_value,
    paired_outcomes,
)
from flight_platform_dev.decision_simulation import simulate

RULE = DecisionRule(alpha=0.05, margin=0.01, min_pairs=1000)
# Flights judged per look (about a replayed day), the longest sequence, and what the models of
# test_closing_the_loop look like: ~56% accurate, one of the two alone right on ~20% of flights.
BATCH, CAP, ACCURACY, DISCORDANT = 250, 20_000, 0.56, 0.2


def test_with_no_true_difference_at_most_alpha_of_the_sequences_decide():
    # Without the margin: a verdict with it is one without it as well, so this bounds both.
    rule = DecisionRule(RULE.alpha, 0.0, RULE.min_pairs)
    result = simulate(rule, ACCURACY, 0.0, DISCORDANT, sequences=1000, batch=BATCH, cap=CAP, seed=7)
    print(f"\nno true difference: {result.decided} of {result.sequences} sequences "
          f"decided ({result.better} better, {result.worse} worse), looked at every {BATCH} "
          f"outcomes up to {CAP:,}")
    assert result.decided <= rule.alpha * result.sequences


def test_twice_the_margin_is_found_better_in_most_sequences():
    result = simulate(RULE, ACCURACY, 2 * RULE.margin, DISCORDANT, sequences=300, batch=BATCH, cap=CAP,
                      seed=8)
    print(f"\n+{200 * RULE.margin:.0f} points: better in {result.better} of {result.sequences}, "
          f"worse in {result.worse}; median outcomes needed {result.median_needed:,.0f}")
    assert result.better >= 0.8 * result.sequences
    assert result.worse == 0


def test_an_identical_challenger_is_never_decided():
    same = paired_outcomes([True, False] * 50_000, [True, False] * 50_000)
    (decision,) = decide({"copy": same}, RULE).values()
    assert decision.verdict is Verdict.NOT_YET and p_value(same) == 1.0
    assert decision.more_pairs_needed is None  # nothing separates them, however long one waits


def test_too_few_pairs_wait_and_say_how_many_more_the_observed_difference_needs():
    early = paired_outcomes([True] * 60 + [False] * 440, [True] * 40 + [False] * 460)
    decision = decide({"new": early}, RULE)["new"]
    assert decision.verdict is Verdict.NOT_YET and "500 paired outcomes" in decision.reason
    # +4 points with 20 of 500 flights discordant: a few thousand flights more
    assert 500 <= decision.more_pairs_needed <= 10_000, decision


def test_a_clear_loss_is_worse_and_a_small_certain_difference_is_within_the_margin():
    worse = PairedOutcomes(pairs=5000, challenger_only_right=300, champion_only_right=600,
                           challenger_right=2500, champion_right=2800)
    small = PairedOutcomes(pairs=200_000, challenger_only_right=10_900, champion_only_right=10_000,
                           challenger_right=110_900, champion_right=110_000)
    decisions = decide({"worse": worse, "small": small}, RULE)
    assert decisions["worse"].verdict is Verdict.WORSE
    assert decisions["small"].verdict is Verdict.NOT_YET and "margin" in decisions["small"].reason
    assert decisions["small"].p_value < RULE.alpha / 2  # certain, yet too small to act on


def test_holm_shares_alpha_among_challengers():
    assert holm_rejects([0.01, 0.04, 0.5], 0.05) == [True, False, False]  # 0.04 > 0.05 / 2
    assert holm_rejects([0.01, 0.02], 0.05) == [True, True]  # 0.01 <= 0.025, then 0.02 <= 0.05
    assert holm_rejects([0.03, 0.03], 0.05) == [False, False]


def test_the_interval_holds_the_observed_difference_and_excludes_zero_once_decided():
    decided = decide({"better": PairedOutcomes(5000, 600, 300, 2800, 2500)}, RULE)["better"]
    low, high = decided.interval
    assert decided.verdict is Verdict.BETTER and 0 < low < decided.outcomes.difference < high
    early = decide({"new": PairedOutcomes(1000, 60, 50, 560, 550)}, RULE)["new"]
    assert early.interval[0] < 0 < early.interval[1]
