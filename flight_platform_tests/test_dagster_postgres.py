"""Dagster on PostgreSQL, as a shared deployment runs it: `dagster-webserver` and `dagster-daemon` as
two processes on one instance whose storage is a private PostgreSQL server."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    DynamicPartitionsDefinition,
    partition_loading_context,
)
from dagster_postgres import PostgresRunStorage

from flight_platform.clients import kafka_access
from flight_platform.clients.mongo import create_client
from flight_platform.clients.security import Role
from flight_platform.core.model_store import ModelStore
from flight_platform.definitions import build_definitions
from flight_platform.local import processes
from flight_platform.local.postgres import (
    dagster_storage,
    dagster_yaml,
    postgres_server,
)
from flight_platform.local.processes import wait_until
from flight_platform.local.stack import dagster_environment, start_server, wait_until_answering
from flight_platform.settings import free_port, load_settings
from flight_platform.streaming.job import MODEL_VERSION_TAG, flight_delay_prediction_stream
from flight_platform_dev.dagster_runs import BIN, graphql, run_cli
from flight_platform_dev.platform import share_services

# Cheap: one aggregation of the session's on_time_performance Parquet into a few hundred documents
# (a few seconds on the session's Spark Connect server).
CHEAP_ASSET = "origin_dest_distances"

ASSET_MATERIALIZATIONS = """
query ($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(limit: 1) { runId partition } }
  }
}"""
RUNS = """
query ($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId jobName status tags { key value } } }
  }
}"""
TERMINATE_RUN = """
mutation ($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on TerminateRunFailure { message } }
}"""


def runs(url: str, **run_filter) -> list[dict]:
    return graphql(url, RUNS, filter=run_filter)["runsOrError"]["results"]


def session_partitions(asset: AssetsDefinition, instance: DagsterInstance) -> list[str]:
    """The asset's partitions as the session knows them (none if it is unpartitioned), registered
    in `instance` too when they are dynamic (an instance keeps those)."""
    partitions = asset.partitions_def
    if partitions is None:
        return []
    with DagsterInstance.get() as session, partition_loading_context(dynamic_partitions_store=session):
        keys = partitions.get_partition_keys()
    if isinstance(partitions, DynamicPartitionsDefinition):
        instance.add_dynamic_partitions(partitions.name, keys)
    return keys


@pytest.fixture
def searchable_tmp_dir() -> Iterator[Path]:
    """Scratch space a root caller's PostgreSQL server (run as the `postgres` user) can enter:
    pytest's tmp_path sits under a directory private to the caller."""
    path = Path(tempfile.mkdtemp(prefix="flight_platform_postgres_"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.postgres
def test_make_run_storage_setting_chooses_sqlite_or_postgres(searchable_tmp_dir):
    environ = {**os.environ, "FLIGHT_PLATFORM_DATA_DIR": str(searchable_tmp_dir)}
    settings = load_settings(environ)
    dagster_environment(settings)  # writes the project's dagster.yaml into DAGSTER_HOME, as make run does
    with dagster_storage(settings), \
            DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"  # not public API
    on_postgres = load_settings({**environ, "FLIGHT_PLATFORM_DAGSTER_STORAGE": "postgres",
                                 "FLIGHT_PLATFORM_POSTGRES_PORT": str(free_port())})
    with dagster_storage(on_postgres), \
            DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_runs() == []


@pytest.mark.postgres
@pytest.mark.services
def test_webserver_and_daemon_on_postgres(materialized, settings, searchable_tmp_dir, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        # The session's request topic, read by a group of its own: other tests keep their messages.
        "FLIGHT_PLATFORM_CONSUMER_GROUP": "dagster_on_postgres",
        # A new group reads the topic from its start: its answers and dead letters, and the
        # distances materialized here, go to a database of its own, not the session's.
        "FLIGHT_PLATFORM_MONGO_DATABASE": f"{settings.mongo_database}_dagster_on_postgres",
    }
    share_services(settings, env["FLIGHT_PLATFORM_MONGO_DATABASE"])  # its users' roles there too
    # The admin step grants the stream's user that group, as for the platform's own.
    kafka_access.grant_access(settings, settings.request_topic, env["FLIGHT_PLATFORM_CONSUMER_GROUP"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with postgres_server(searchable_tmp_dir / "postgres", free_port()) as server, \
            create_client(settings, Role.ADMIN) as mongo, ExitStack() as running:
        (dagster_home / "dagster.yaml").write_text(dagster_yaml(settings, server))
        asset = build_definitions(load_settings(env)).get_assets_def(AssetKey(CHEAP_ASSET))
        # Opening the instance creates the storage's tables now, rather than three processes
        # racing to create them.
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            partitions = session_partitions(asset, instance)
        running.callback(mongo.drop_database, env["FLIGHT_PLATFORM_MONGO_DATABASE"])
        webserver = start_server([BIN / "dagster-webserver", "-w", "workspace.yaml",
                                  "-h", "127.0.0.1", "-p", str(port)], env)
        running.callback(processes.stop, webserver)
        daemon = start_server([BIN / "dagster-daemon", "run", "-w", "workspace.yaml"], env)
        running.callback(processes.stop, daemon)  # stopped first, with the code server and runs it started

        # (1) A materialization by the CLI, recorded in Postgres, seen through the webserver.
        # Every partition (in one run): the asset's check compares its routes with all the flights.
        partition_range = ["--partition-range", f"{partitions[0]}...{partitions[-1]}"] if partitions else []
        result = run_cli("dg", "launch", "--assets", CHEAP_ASSET,
                         "-m", "flight_platform.definitions", *partition_range, env=env)
        assert result.returncode == 0, result.stderr[-5000:]
        wait_until_answering(f"{url}/server_info", webserver)
        materializations = graphql(url, ASSET_MATERIALIZATIONS, key={"path": [CHEAP_ASSET]})[
            "assetOrError"]["assetMaterializations"]
        assert materializations, f"no materialization of {CHEAP_ASSET} in the webserver"
        assert materializations[0]["partition"] in (partitions or [None])
        materialization_run = materializations[0]["runId"]

        # (2) The daemon's sensor launches the stream on the session's promoted model; terminated
        # through the webserver, it stops as canceled.
        stream = wait_until(lambda: runs(url, pipelineName=flight_delay_prediction_stream.name,
                                       statuses=["STARTED"]),
                          timeout=240, interval=2, what="the sensor's stream run to start")[0]
        tags = {tag["key"]: tag["value"] for tag in stream["tags"]}
        assert tags[MODEL_VERSION_TAG] == ModelStore(settings.model_store_dir).current_version()
        terminated = graphql(url, TERMINATE_RUN, runId=stream["runId"])["terminateRun"]
        assert terminated["__typename"] == "TerminateRunSuccess", terminated
        wait_until(lambda: runs(url, runIds=[stream["runId"]])[0]["status"] == "CANCELED",
                 timeout=90, interval=1, what="the stream run to be canceled")

        recorded = {run_id: (job, status) for run_id, job, status in
                    server.query("SELECT run_id, pipeline_name, status FROM runs")}
        assert recorded.pop(materialization_run)[1] == "SUCCESS"
        assert recorded[stream["runId"]] == (flight_delay_prediction_stream.name, "CANCELED")
        # The daemon launched nothing else (its other sensors would write the session's tables).
        assert {job for job, _ in recorded.values()} == {flight_delay_prediction_stream.name}
