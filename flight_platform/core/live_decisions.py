"""Whether a challenger is better or worse than the champion on real flights: a sequential test on
paired outcomes whose false-decision rate stays at or below alpha however often it is looked at.

The champion and its challengers score the same requests, so the evidence is paired: on each
judged flight each version was right or wrong. Only the flights where exactly one of the two was
right tell them apart (McNemar's setting). Given m such discordant flights, the challenger right on
k of them, under "no difference" k ~ Binomial(m, 1/2) whatever the accuracies are. The test is a
mixture sequential probability ratio test (Robbins, "Statistical methods related to the law of the
iterated logarithm", Ann. Math. Statist. 1970; as used for A/B tests watched continuously by
Johari, Koomen, Pekelis and Walsh, "Always valid inference: continuous monitoring of A/B tests",
Operations Research 2022): the likelihood ratio of a Beta(a, a) mixture of alternatives against
p = 1/2,

    Lambda_m = 2^m * B(a + k, a + m - k) / B(a, a),

is a nonnegative martingale under the null, so by Ville's inequality P(Lambda_m >= 1/alpha for some
m) <= alpha: `1/Lambda_m` is a p-value valid at whatever moment one stops to look. Several
challengers tested at once share alpha by Holm's step-down procedure on those p-values (valid for
p-values with any dependence, as these are: they share the champion's outcomes).

A verdict also needs a minimum of paired outcomes and an observed difference of at least the
margin: a difference too small to act on is "not yet" however certain it is.

Pure functions (no Dagster, no Spark): the batch wiring is flight_platform.batch.champion.
"""

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# The mixture's Beta(a, a) spreads its alternatives over the share of discordant flights the
# challenger wins: a = 50 puts most of them within 0.4-0.6, where two models a few accuracy
# points apart (with 10-30% of flights discordant) lie. Chosen by the simulations of
# benchmarks/live_decisions.py: power at twice the margin, not the error rate, depends on it.
MIXTURE_A = 50.0


# What live decisions do to the champion (FLIGHT_PLATFORM_LIVE_DECISIONS): act, only record, or
# test nothing.
APPLY, RECOMMEND, OFF = "apply", "recommend", "off"
MODES = (APPLY, RECOMMEND, OFF)


class Verdict(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NOT_YET = "not yet"


@dataclass(frozen=True)
class DecisionRule:
    alpha: float = 0.05  # the false-decision rate, shared by the challengers tested together
    margin: float = 0.01  # the smallest accuracy difference worth acting on (0.01 = 1 point)
    min_pairs: int = 1000  # no verdict on fewer paired outcomes


@dataclass(frozen=True)
class PairedOutcomes:
    """Two versions judged on the same flights."""
    pairs: int
    challenger_only_right: int
    champion_only_right: int
    challenger_right: int
    champion_right: int
    # The challenger's Brier score (multiclass, 0 best, 2 worst) minus the champion's, over pairs:
    # its mean and standard deviation
    brier_difference: float = float("nan")
    brier_difference_sd: float = float("nan")

    @property
    def discordant(self) -> int:
        return self.challenger_only_right + self.champion_only_right

    @property
    def difference(self) -> float:
        """Challenger's accuracy minus the champion's, on the same flights."""
        return (self.challenger_only_right - self.champion_only_right) / self.pairs if self.pairs else 0.0

    @property
    def accuracy_z(self) -> float:
        """How many standard errors the accuracy difference is from none, at a fixed sample size:
        against `brier_z`, which of the two statistics separates the versions sooner (the pairs
        a test needs go with 1/z^2)."""
        variance = self.discordant / self.pairs - self.difference ** 2 if self.pairs else 0.0
        return self.difference / math.sqrt(variance / self.pairs) if variance > 0 else float("nan")

    @property
    def brier_z(self) -> float:
        """The same for the Brier difference, signed so that positive favours the challenger."""
        if not self.pairs or not self.brier_difference_sd > 0:
            return float("nan")
        return -self.brier_difference / (self.brier_difference_sd / math.sqrt(self.pairs))

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_right / self.pairs if self.pairs else float("nan")

    @property
    def champion_accuracy(self) -> float:
        return self.champion_right / self.pairs if self.pairs else float("nan")


def paired_outcomes(challenger_right: np.ndarray, champion_right: np.ndarray,
                    brier_differences: np.ndarray | None = None) -> PairedOutcomes:
    """From two boolean arrays over the same flights (was each version right) and, optionally,
    the challenger's Brier score minus the champion's on each."""
    challenger_right, champion_right = np.asarray(challenger_right, bool), np.asarray(champion_right, bool)
    brier = 0 if brier_differences is None else len(brier_differences)
    return PairedOutcomes(
        pairs=len(champion_right),
        challenger_only_right=int((challenger_right & ~champion_right).sum()),
        champion_only_right=int((champion_right & ~challenger_right).sum()),
        challenger_right=int(challenger_right.sum()), champion_right=int(champion_right.sum()),
        brier_difference=float(np.mean(brier_differences)) if brier else float("nan"),
        brier_difference_sd=float(np.std(brier_differences, ddof=1)) if brier > 1 else float("nan"))


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def log_likelihood_ratio(wins: int, losses: int, a: float = MIXTURE_A) -> float:
    """log Lambda for `wins` discordant flights won by the challenger and `losses` lost."""
    m = wins + losses
    return m * math.log(2) + _log_beta(a + wins, a + losses) - _log_beta(a, a)


def p_value(outcomes: PairedOutcomes) -> float:
    """The always-valid p-value of "no difference": min(1, 1/Lambda)."""
    return min(1.0, math.exp(-log_likelihood_ratio(outcomes.challenger_only_right,
                                                   outcomes.champion_only_right)))


def difference_interval(outcomes: PairedOutcomes, level: float,
                        a: float = MIXTURE_A) -> tuple[float, float]:
    """The challenger's accuracy minus the champion's: the values the test does not reject at
    `level` (a confidence sequence, by inverting the mixture ratio at each share won of the
    discordant flights), scaled by the observed share of discordant flights."""
    wins, losses = outcomes.challenger_only_right, outcomes.champion_only_right
    if not outcomes.pairs:
        return (-1.0, 1.0)
    shares = np.linspace(0.0005, 0.9995, 1999)
    log_mixture = _log_beta(a + wins, a + losses) - _log_beta(a, a)
    log_ratio = log_mixture - wins * np.log(shares) - losses * np.log1p(-shares)
    kept = shares[log_ratio < math.log(1 / level)]
    scale = outcomes.discordant / outcomes.pairs
    return (float(scale * (2 * kept.min() - 1)), float(scale * (2 * kept.max() - 1)))


def holm_levels(p_values: list[float], alpha: float) -> list[float]:
    """The level each p-value is compared with under Holm's step-down procedure; a p-value rejects
    when it and every smaller one are at or below their levels (`holm_rejects`)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    levels = [0.0] * len(p_values)
    for rank, i in enumerate(order):
        levels[i] = alpha / (len(p_values) - rank)
    return levels


def holm_rejects(p_values: list[float], alpha: float) -> list[bool]:
    levels = holm_levels(p_values, alpha)
    rejects = [False] * len(p_values)
    for i in sorted(range(len(p_values)), key=lambda j: p_values[j]):
        if p_values[i] > levels[i]:
            break
        rejects[i] = True
    return rejects


def discordant_needed(share_won: float, level: float, a: float = MIXTURE_A,
                      limit: int = 10_000_000) -> int | None:
    """The fewest discordant flights at which a challenger winning `share_won` of them is decided
    at `level`; None if never (no difference) or beyond `limit`."""
    if abs(share_won - 0.5) < 1e-9:
        return None
    threshold = math.log(1 / level)

    def decided(m: int) -> bool:
        wins = round(share_won * m)
        return log_likelihood_ratio(wins, m - wins, a) >= threshold

    high = 16
    while not decided(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    while high - low > 1:  # the ratio grows with m at a fixed share: bisect
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    outcomes: PairedOutcomes
    p_value: float
    level: float  # what p_value is compared with (alpha, Holm-adjusted for several challengers)
    interval: tuple[float, float]  # of the accuracy difference, at `level`
    # When not yet: roughly how many more paired outcomes the observed difference (or the margin,
    # if larger) would need; None when nothing separates the two versions yet.
    more_pairs_needed: int | None
    reason: str


def pairs_needed(outcomes: PairedOutcomes, rule: DecisionRule, level: float) -> int | None:
    """Paired outcomes for a verdict if the two keep differing as observed (at least by the
    margin) with the observed share of discordant flights."""
    if outcomes.discordant == 0:
        return None
    discordant_share = outcomes.discordant / outcomes.pairs
    difference = max(abs(outcomes.difference), rule.margin)
    # difference = discordant share * (2 * share won - 1)
    share_won = min(1.0, 0.5 + difference / (2 * discordant_share))
    discordant = discordant_needed(share_won, level)
    if discordant is None:
        return None
    return max(rule.min_pairs, math.ceil(discordant / discordant_share))


def decide(challengers: dict[str, PairedOutcomes], rule: DecisionRule) -> dict[str, Decision]:
    """A verdict on each challenger against the champion, alpha shared among them by Holm."""
    names = list(challengers)
    p_values = [p_value(challengers[name]) for name in names]
    levels = holm_levels(p_values, rule.alpha)
    rejects = holm_rejects(p_values, rule.alpha)
    decisions = {}
    for name, p, level, rejected in zip(names, p_values, levels, rejects, strict=True):
        outcomes = challengers[name]
        difference = outcomes.difference
        if outcomes.pairs < rule.min_pairs:
            verdict, reason = Verdict.NOT_YET, (f"{outcomes.pairs:,} paired outcomes of the "
                                                f"{rule.min_pairs:,} required")
        elif not rejected:
            verdict, reason = Verdict.NOT_YET, (f"not distinguishable yet (p = {p:.3g}, Holm level "
                                                f"{level:.3g})")
        elif abs(difference) < rule.margin:
            verdict, reason = Verdict.NOT_YET, (f"{100 * difference:+.1f} points, within the "
                                                f"{100 * rule.margin:.1f}-point margin")
        else:
            verdict = Verdict.BETTER if difference > 0 else Verdict.WORSE
            reason = f"{100 * difference:+.1f} points on {outcomes.pairs:,} real flights (p = {p:.2g})"
        needed = None
        if verdict is Verdict.NOT_YET and (outcomes.pairs < rule.min_pairs or not rejected):
            total = pairs_needed(outcomes, rule, level)
            needed = None if total is None else max(0, total - outcomes.pairs)
        decisions[name] = Decision(verdict, outcomes, p, level, difference_interval(outcomes, level),
                                   needed, reason)
    return decisions
