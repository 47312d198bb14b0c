"""Running the platform's Dagster code as the tests and benchmarks need it: Dagster's CLI from this
virtualenv, as a person runs it, and materializations in the calling process."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from flight_platform.definitions import build_definitions
from flight_platform.local.stack import materialize_command, register_months
from flight_platform.resources import SparkResource, build_resources
from flight_platform.settings import REPO_ROOT, Settings, load_settings

BIN = Path(sys.executable).parent
ASSETS = ["on_time_performance", "origin_dest_distances", "flight_delay_features",
          "flight_delay_model"]


def graphql(url: str, query: str, **variables) -> dict:
    """The data of a query to the Dagster UI's GraphQL API at `url` (AssertionError on errors)."""
    request = urllib.request.Request(f"{url}/graphql", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"query": query, "variables": variables}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """A command of the venv (`dg`, ...) or an absolute path, run from the repo root."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def materialize_all(settings: Settings, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    """Register the months the sources hold, then materialize everything with `dg launch`,
    as `make run` does (`env`: another platform's environment)."""
    return run_cli(*materialize_command(register_months(settings)), env=env)


def materialize_in_process(selection: list[str], partition_key: str | None = None, instance=None,
                           run_config=None, **resource_overrides):
    """Materialize `selection` in this process, against the platform the environment's settings
    name. This process keeps its CPU priority (a run process lowers its own)."""
    settings = load_settings()
    defs = build_definitions(settings)
    keeping_priority = SparkResource(spark_config={"spark.remote": settings.spark_remote}, niceness=0,
                                     call_retries=settings.spark_call_retries)
    return materialize(
        [*(defs.get_assets_def(AssetKey(a)) for a in ASSETS), *defs.asset_checks],
        selection=selection, partition_key=partition_key, run_config=run_config,
        resources={**build_resources(settings), "spark": keeping_priority, **resource_overrides},
        instance=instance or DagsterInstance.get(), raise_on_error=False,
    )


def latest_metadata(asset: str) -> dict:
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
