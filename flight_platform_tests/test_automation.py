"""The loop runs by itself: a private stack as `make run` runs it (Dagster's daemon with the inbox
sensor, declarative automation and the stream supervisor), seeded with this session's tables and
model, serving a steady trickle. A new month of BTS data is dropped into the inbox and nothing else
is done. The retrain cron ticks every minute here (hourly by default) and the batch sensors every
5 s (15 s: each hop from the inbox to a new model waits for a tick), the retrain learns a sliding
window of the latest two months (FLIGHT_PLATFORM_TRAINING_RECENT_MONTHS) and the promotion tolerance
is opened wide, since this test is about the loop; test_batch_assets checks the guard itself."""

import pytest
from dagster import AssetKey

from flight_platform.batch.freshness import CHECK_KEY
from flight_platform.core.model_store import FLIGHT_DELAY_MODEL, ModelStore
from flight_platform.local.processes import wait_until
from flight_platform.local.stack import MONTHLY_ASSETS
from flight_platform.warehouse import ON_TIME_PERFORMANCE
from flight_platform_dev import drills
from flight_platform_dev.dagster_runs import graphql
from flight_platform_dev.platform import PrivatePlatform

# A stack start, an ingest, automation, a retrain and a roll-out: more than the default 600 s limit
# on a slow two-core box.
pytestmark = [pytest.mark.services, pytest.mark.faults, pytest.mark.timeout(1200)]
DAY = 24 * 3600


FRESHNESS = """
query Freshness($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    freshnessStatusInfo { freshnessStatus }
    internalFreshnessPolicy { ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } }
  }
}"""


def freshness(dagster_url: str) -> dict[str, str]:
    """The UI's freshness status of the feed and the model, checking their windows on the way."""
    nodes = graphql(dagster_url, FRESHNESS,
                    keys=[{"path": [ON_TIME_PERFORMANCE]}, {"path": [FLIGHT_DELAY_MODEL]}])["assetNodes"]
    windows = {node["assetKey"]["path"][0]: node["internalFreshnessPolicy"] for node in nodes}
    assert windows == {ON_TIME_PERFORMANCE: {"failWindowSeconds": 45 * DAY, "warnWindowSeconds": 35 * DAY},
                       FLIGHT_DELAY_MODEL: {"failWindowSeconds": 46 * DAY, "warnWindowSeconds": 36 * DAY}}
    return {node["assetKey"]["path"][0]: node["freshnessStatusInfo"]["freshnessStatus"] for node in nodes}


def trained_on_every_month(platform: PrivatePlatform, version: str) -> bool:
    """Whether the check's latest evaluation passed on `version` with no month waiting. Until the
    sensor's next tick, the latest may still be one from before any training, without a version."""
    with platform.instance() as instance:
        record = instance.get_latest_asset_check_evaluation_record(CHECK_KEY)
    evaluation = record and record.evaluation
    if not (evaluation and evaluation.passed and "model_version" in evaluation.metadata):
        return False
    return (evaluation.metadata["model_version"].value == version
            and evaluation.metadata["months_since_training"].value == [])


def platform_environment() -> dict[str, str]:
    return {"FLIGHT_PLATFORM_RETRAIN_CRON": "* * * * *", "FLIGHT_PLATFORM_TRAINING_RECENT_MONTHS": "2",
            "FLIGHT_PLATFORM_PROMOTION_TOLERANCE": "1", "FLIGHT_PLATFORM_BATCH_SENSOR_INTERVAL_S": "5"}


def test_a_dropped_month_is_ingested_learned_and_served_unattended(platform, capsys):
    result, version = drills.drill_new_month(platform, rate=5)
    with capsys.disabled():
        print(f"\nfile drop -> first answer by the new model: {result.serving_again_s:.0f} s")
    # Every request sent meanwhile was answered (never twice: answers are keyed by request).
    assert result.sent > 0 and result.lost == 0, result
    with platform.instance() as instance:
        for asset in MONTHLY_ASSETS:  # the sensor's run, then automation's
            assert "2014-01" in instance.get_materialized_partitions(AssetKey(asset)), asset
    info = ModelStore(platform.settings.model_store_dir).read_info(version)
    assert info["months"] == ["2013-12", "2014-01"]
    # Dagster's freshness daemon judges the feed and the model just rebuilt fresh.
    url = f"http://127.0.0.1:{platform.settings.dagster_port}"
    wait_until(lambda: freshness(url) == {ON_TIME_PERFORMANCE: "HEALTHY", FLIGHT_DELAY_MODEL: "HEALTHY"},
               120, "the feed and the model judged fresh")
    # The daemon's model_freshness sensor finds the new month in the new model's training.
    wait_until(lambda: trained_on_every_month(platform, version), 120,
               f"{CHECK_KEY.name} passed on model {version}")
