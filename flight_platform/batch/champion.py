"""Live outcomes decide the champion: each time `prediction_outcomes` joins answers with what the
flights did, every challenger is tested against the champion on the flights both scored
(core.live_decisions). A better challenger is promoted (the stream supervisor rolls it out
blue/green) and the champion it replaces stays as a challenger on probation; a predecessor on
probation found better than its successor is restored (before any other challenger is
promoted). Probation ends after a number of judged flights or days. Every decision, "not yet"
included, is returned as evidence for the asset's metadata; the model store's champions.json says
when and why each champion came and went.

The model store's `live_decisions` setting: "apply" acts, "recommend" records what it would do and
changes nothing, "off" tests nothing.
"""

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from flight_platform.core import monitoring
from flight_platform.core.live_decisions import APPLY, OFF, RECOMMEND, Decision, DecisionRule, Verdict, decide
from flight_platform.core.model_store import ModelStore

EVIDENCE_COLUMNS = ["Champion", "Challenger", "OnProbation", "Pairs", "Discordant",
                    "ChallengerAccuracy", "ChampionAccuracy", "DifferencePoints", "IntervalPoints",
                    "PValue", "Level", "BrierDifference", "AccuracyZ", "BrierZ", "Verdict", "Reason",
                    "MorePairsNeeded"]


@dataclass(frozen=True)
class Review:
    evidence: pd.DataFrame  # one row per challenger tested
    actions: list[str] = field(default_factory=list)  # what was done ("recommend": would be done)


def evidence_row(champion: str, challenger: str, on_probation: bool, decision: Decision) -> dict:
    outcomes = decision.outcomes
    low, high = decision.interval
    return {
        "Champion": champion, "Challenger": challenger, "OnProbation": on_probation,
        "Pairs": outcomes.pairs, "Discordant": outcomes.discordant,
        "ChallengerAccuracy": round(outcomes.challenger_accuracy, 4),
        "ChampionAccuracy": round(outcomes.champion_accuracy, 4),
        "DifferencePoints": round(100 * outcomes.difference, 2),
        "IntervalPoints": f"[{100 * low:+.1f}, {100 * high:+.1f}]",
        "PValue": float(f"{decision.p_value:.3g}"), "Level": float(f"{decision.level:.3g}"),
        "BrierDifference": round(outcomes.brier_difference, 4),
        "AccuracyZ": round(outcomes.accuracy_z, 2), "BrierZ": round(outcomes.brier_z, 2),
        "Verdict": str(decision.verdict), "Reason": decision.reason,
        "MorePairsNeeded": decision.more_pairs_needed,
    }


def _probation_over(store: ModelStore, pairs: int, probation_pairs: int, probation_days: float) -> str | None:
    """Why the current champion's probation is over, or None while it lasts."""
    came = dt.datetime.fromisoformat(store.champions()[-1]["came"])
    days = (dt.datetime.now(dt.UTC) - came).total_seconds() / 86_400
    if pairs >= probation_pairs:
        return f"{pairs:,} flights judged (probation: {probation_pairs:,})"
    if days >= probation_days:
        return f"{days:.1f} days served (probation: {probation_days:g})"
    return None


def review_champion(store: ModelStore, read_outcomes: Callable[[list[str]], pd.DataFrame], mode: str,
                    rule: DecisionRule, probation_pairs: int, probation_days: float,
                    log: logging.Logger) -> Review:
    """Test every challenger against the champion on their outcomes (`read_outcomes(versions)`:
    the judged answers of any month, as prediction_outcomes stores them; read only when there is
    something to test) and, with `mode` "apply", act on the verdicts."""
    champion, challengers = store.current_version(), store.challengers()
    if mode == OFF or champion is None or not challengers:
        return Review(pd.DataFrame(columns=EVIDENCE_COLUMNS))
    predecessor = store.on_probation()
    outcomes = read_outcomes([champion, *challengers])
    decisions = decide(monitoring.paired_by_version(outcomes, champion, challengers), rule)
    evidence = pd.DataFrame([evidence_row(champion, version, version == predecessor, decision)
                             for version, decision in decisions.items()], columns=EVIDENCE_COLUMNS)
    evidence["MorePairsNeeded"] = evidence["MorePairsNeeded"].astype("Int64")  # a count, or none
    better = sorted((d.outcomes.difference, version) for version, d in decisions.items()
                    if d.verdict is Verdict.BETTER)
    # Restoring the predecessor comes first: it is a known model, and the champion it beats was
    # only on trial. Otherwise the challenger ahead by the most is promoted.
    restore = [(difference, version) for difference, version in better if version == predecessor]
    actions = []
    if better:
        difference, version = (restore or better)[-1]
        pairs = decisions[version].outcomes.pairs
        if version == predecessor:
            reason = (f"restored: {champion} was {100 * difference:.1f} points less accurate on "
                      f"{pairs:,} real flights")
            actions.append(f"restore {version} in place of {champion} ({reason})")
            if mode == APPLY:
                store.promote(version, reason, probation=False)
        else:
            reason = f"promoted on {pairs:,} real flights: {100 * difference:+.1f} points"
            actions.append(f"promote {version} over {champion} ({reason})")
            if mode == APPLY:
                store.promote(version, reason, probation=True)
    elif predecessor is not None and (over := _probation_over(
            store, decisions[predecessor].outcomes.pairs, probation_pairs, probation_days)):
        actions.append(f"end the probation of {predecessor}: {over}")
        if mode == APPLY:
            store.end_probation(over)
    for action in actions:
        log.info(f"Live decision ({mode}): {action}")
    return Review(evidence, [f"recommended: {a}" if mode == RECOMMEND else a for a in actions])
