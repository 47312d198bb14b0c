"""The whole asset graph on a real Spark standalone cluster (a master and a worker on loopback): a
Spark Connect server whose driver is the cluster's client, set by FLIGHT_PLATFORM_SPARK_MASTER alone,
gives what the session's local-mode materialization gave. Its model learns the latest month alone
(FLIGHT_PLATFORM_TRAINING_RECENT_MONTHS): the test is about where the work runs, and a forest on
the whole year would add only more of the same tasks."""

import os

import pyarrow.parquet as pq
import pytest
from pymongo import MongoClient

from flight_platform.clients.mongo import DISTANCES, create_client
from flight_platform.clients.security import Role
from flight_platform.local import services
from flight_platform.local.processes import wait_until
from flight_platform.local.stack import dagster_environment
from flight_platform.resources import build_resources
from flight_platform.settings import Settings, free_port, load_settings
from flight_platform_dev.dagster_runs import materialize_all
from flight_platform_dev.platform import share_services
from flight_platform_dev.spark_cluster import spark_cluster

PARQUET_TABLES = ["on_time_performance", "flight_delay_features"]


def read_table(settings: Settings, table: str):
    return pq.read_table(build_resources(settings)["warehouse"].table_path(table))


def distances(client: MongoClient, settings: Settings) -> list[dict]:
    return list(client[settings.mongo_database][DISTANCES].find({}, {"_id": 0})
                .sort([("Origin", 1), ("Dest", 1)]))


@pytest.mark.cluster
@pytest.mark.services
def test_materialize_everything_on_a_spark_standalone_cluster(materialized, settings, tmp_path,
                                                              monkeypatch):
    with spark_cluster(tmp_path / "spark") as cluster, create_client(settings, Role.ADMIN) as client:
        # Its own warehouse, model store, Mongo database, Dagster instance and Spark Connect server
        # (the cluster's driver); the session's Kafka and Mongo servers. The executors are other
        # processes writing the warehouse and model store paths: on one machine they share the
        # driver's local filesystem.
        for name, value in cluster.driver_environment().items():
            monkeypatch.setenv(name, value)  # the Spark server's (spark-submit reads SPARK_CONF_DIR)
        overrides = {
            "FLIGHT_PLATFORM_DATA_DIR": str(tmp_path / "data"),
            "FLIGHT_PLATFORM_MODEL_DIR": str(tmp_path / "data" / "models"),
            "FLIGHT_PLATFORM_MONGO_DATABASE": f"{settings.mongo_database}_on_cluster",
            **share_services(settings, f"{settings.mongo_database}_on_cluster"),
            "FLIGHT_PLATFORM_SPARK_REMOTE": f"sc://127.0.0.1:{free_port()}",
            "FLIGHT_PLATFORM_TRAINING_RECENT_MONTHS": "1",
            **cluster.driver_environment(),
        }
        on_cluster = load_settings({**os.environ, **overrides})
        env = {**dagster_environment(on_cluster), **overrides}
        spark_server = services.spark_server(on_cluster)
        try:
            services.start(spark_server)
            # As the session's `materialized` fixture does, in this platform's instance.
            result = materialize_all(on_cluster, env)
            assert result.returncode == 0, result.stderr[-5000:]
            services.stop(spark_server)

            # The cluster did the work: the master ran the server's application, and its
            # executor, in the worker, logged the tasks it finished.
            application = wait_until(
                lambda: next((app for app in cluster.master_state()["completedapps"]
                              if app["name"] == "flight_platform"), None),
                timeout=60, what="the master to list the finished flight_platform application")
            executor_logs = list((cluster.work_dir / application["id"]).glob("*/stderr"))
            assert executor_logs, f"no executor logs under {cluster.work_dir}"
            assert any("Finished task" in log.read_text() for log in executor_logs)

            for table in PARQUET_TABLES:
                local, clustered = read_table(settings, table), read_table(on_cluster, table)
                assert clustered.num_rows == local.num_rows, table
                assert clustered.schema == local.schema, table
            assert distances(client, on_cluster) == distances(client, settings)
            assert distances(client, settings)

            store = build_resources(on_cluster)["model_store"].store()
            version = store.current_version()
            assert version is not None, "the model trained on the cluster was not promoted"
            info = store.read_info(version)
            assert info["months"] == ["2013-12"]
            assert info["accuracy"] > info["majority_baseline_accuracy"]
            assert info["scorer_parity"]["prediction_mismatches"] == 0
        finally:
            services.stop(spark_server)
            client.drop_database(on_cluster.mongo_database)
