"""The drift check of `prediction_outcomes`: the requests a month's answers were served for, against
what the model serving them trained on (population stability index per feature)."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from flight_platform.batch.metadata import frame_table
from flight_platform.batch.outcomes import prediction_outcomes
from flight_platform.batch.sources import flight_months
from flight_platform.core import monitoring
from flight_platform.core.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from flight_platform.resources import ModelStoreResource, WarehouseResource
from flight_platform.warehouse import DRIFT_CHECK, FLIGHT_DELAY_FEATURES, PREDICTION_OUTCOMES

# One day has one DayOfYear and a month a dozen DayOfMonth values: their distribution in a
# window of requests says which days were asked about, not that the population moved.
CALENDAR_FEATURES = ["DayOfMonth", "DayOfWeek", "DayOfYear"]
DRIFT_NUMERIC = [feature for feature in NUMERIC_FEATURES if feature not in CALENDAR_FEATURES]
# Below this many requests, sampling noise alone puts some feature's PSI near 0.2 (resampling the
# 2013 flights: 99th percentile of the largest of the six 0.20 at 200 requests, 0.14 at 300).
MIN_SERVED_REQUESTS = 300


def drift_check(threshold: float) -> AssetChecksDefinition:
    """The drift check of `prediction_outcomes`, warning when a feature's PSI is over `threshold`
    (settings.drift_psi_threshold)."""

    @asset_check(
        asset=prediction_outcomes, name=DRIFT_CHECK, blocking=False, partitions_def=flight_months,
        description=f"The requests served for the month's flights against the training features "
        f"of the champion that served most of them (its model.json months): population stability "
        f"index per feature, warning over {threshold}. {', '.join(DRIFT_NUMERIC)} are binned by "
        f"training deciles; {', '.join(CATEGORICAL_FEATURES)} by their "
        f"{monitoring.TOP_CATEGORIES} most frequent training categories plus 'other' and 'unseen' "
        f"(few bins: a few hundred requests over 200 route bins would cross 0.2 by chance). "
        f"{', '.join(CALENDAR_FEATURES)} are left out: a window of requests fixes them (one day has "
        f"one DayOfYear). Under {MIN_SERVED_REQUESTS} requests it passes, saying so.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource,
               model_store: ModelStoreResource) -> AssetCheckResult:
        features = [*DRIFT_NUMERIC, *CATEGORICAL_FEATURES]
        outcomes = warehouse.read_months(PREDICTION_OUTCOMES, context.partition_keys,
                                         [*features, "ModelVersion", "Role"])
        served = outcomes[outcomes["Role"] == monitoring.CHAMPION]  # one row per request
        if len(served) < MIN_SERVED_REQUESTS:
            return AssetCheckResult(
                passed=True, metadata={"served_requests": len(served)},
                description=f"{len(served)} requests served, under {MIN_SERVED_REQUESTS}: too few "
                "to tell drift from sampling noise.")
        version = served["ModelVersion"].value_counts().idxmax()
        try:
            months = model_store.store().read_info(version)["months"]
        except FileNotFoundError:
            return AssetCheckResult(
                passed=False, severity=AssetCheckSeverity.WARN,
                metadata={"served_requests": len(served), "compared_with_version": version},
                description=f"Model version {version}, which served most requests, has been pruned "
                "from the store: what it trained on is unknown.")
        training = warehouse.read_months(FLIGHT_DELAY_FEATURES, months, features)
        drift = monitoring.feature_drift(training, served, DRIFT_NUMERIC, CATEGORICAL_FEATURES)
        over = drift[drift["PSI"] > threshold]
        if len(over):
            description = (f"PSI over {threshold} for " + ", ".join(
                f"{row.Feature} ({row.PSI:.2f})" for row in over.itertuples())
                + f": the requests served differ from what model {version} trained on.")
        else:
            largest = drift.loc[drift["PSI"].idxmax()]
            description = (f"Every feature's PSI is under {threshold} (largest: "
                           f"{largest['Feature']} {largest['PSI']:.3f}).")
        return AssetCheckResult(
            passed=over.empty,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "psi_by_feature": frame_table(drift),
                "threshold": threshold,
                "features_over_threshold": MetadataValue.json(over["Feature"].tolist()),
                "served_requests": len(served),
                "compared_with_version": version,
                "training_months": MetadataValue.json(months),
                "training_rows": len(training),
                "left_out": ", ".join(CALENDAR_FEATURES),
            },
            description=description,
        )

    return _check
