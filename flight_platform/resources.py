"""Dagster resources: Spark, Kafka, MongoDB, the Parquet warehouse and the model store.

Each is a ConfigurableResource whose defaults come from `flight_platform.settings`, so the same
definitions run against the local stack or a cluster by environment alone.
"""

import os
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
from dagster import ConfigurableResource
from dagster_pyspark import LazyPySparkResource
from kafka import KafkaConsumer, KafkaProducer
from pydantic import PrivateAttr
from pymongo import MongoClient
from pymongo.database import Database
from pyspark.sql import SparkSession

from flight_platform import warehouse
from flight_platform.clients import kafka, mongo, spark
from flight_platform.core.model_store import ModelStore
from flight_platform.settings import Settings


class SparkResource(LazyPySparkResource):
    """A Spark Connect session on the long-lived server `spark_config["spark.remote"]` names,
    created on first use (assets that never touch Spark open none), shared by every asset and
    check of the run (the in-process executor keeps them in one process: each run has a session of
    its own) and released on the server when the run ends.

    A run that uses it is batch work: it lowers the run's process to `niceness` (0-19; 0 leaves it
    alone) as the run starts, so on a box shared with the stream and the web app the run takes
    only the CPU they leave (the server runs at the same niceness, set by the service manager)."""

    niceness: int = 19

    def setup_for_execution(self, context) -> None:
        if self.niceness:
            lower_priority(psutil.Process(), self.niceness)

    @property
    def spark_session(self) -> SparkSession:
        if self._spark_session is None:
            super().spark_session.client.set_retry_policies([spark.retry_policy()])
        return self._spark_session

    def teardown_after_execution(self, context) -> None:
        if self._spark_session is None:
            return
        remote = self.spark_config["spark.remote"]
        if spark.server_reachable(remote):
            self._spark_session.stop()  # the server drops the session's views, configs and data
        else:
            context.log.error(
                f"The Spark Connect server at {remote} stopped answering during this run. Start it "
                f"again (`python -m flight_platform.local.services up`, which `make run` does), "
                f"then re-execute the run from its failed steps.")


def lower_priority(process: psutil.Process, niceness: int) -> None:
    """Set every thread of `process` to `niceness`. On Linux a priority belongs to a thread, and a
    thread starts with its creator's, so the threads the process creates later inherit it too."""
    for thread in process.threads():
        try:
            os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
        except ProcessLookupError:  # the thread ended since it was listed
            pass


class KafkaResource(ConfigurableResource):
    bootstrap_servers: str
    request_topic: str
    request_topic_partitions: int
    request_topic_replication_factor: int = 1
    request_topic_min_insync_replicas: int = 1
    consumer_group: str
    consumer_session_timeout_ms: int
    max_message_bytes: int
    # Stream runs the supervisor keeps alive in the consumer group, one per slot.
    stream_workers: int = 1

    def ensure_request_topic(self) -> bool:
        return kafka.ensure_topic(self.bootstrap_servers, self.request_topic,
                                  self.request_topic_partitions, self.request_topic_replication_factor,
                                  self.request_topic_min_insync_replicas)

    def request_consumer(self) -> KafkaConsumer:
        return kafka.create_consumer(self.bootstrap_servers, self.consumer_group,
                                     self.request_topic, self.consumer_session_timeout_ms)

    def request_topic_partition_count(self) -> int:
        return kafka.partition_count(self.bootstrap_servers, self.request_topic)

    def producer(self) -> KafkaProducer:
        return kafka.create_producer(self.bootstrap_servers)


class MongoResource(ConfigurableResource):
    uri: str
    database: str

    _client: MongoClient | None = PrivateAttr(default=None)

    def get_database(self) -> Database:
        if self._client is None:
            self._client = mongo.create_client(self.uri)
        return self._client[self.database]

    def teardown_after_execution(self, context) -> None:
        if self._client is not None:
            self._client.close()


class WarehouseResource(ConfigurableResource):
    """Where the Parquet tables live (a local path here; an s3a:// or hdfs:// URI on a cluster)
    and the inbox for BTS downloads."""

    root: str
    bts_dir: str

    def table_path(self, table: str) -> str:
        return warehouse.table_path(self.root, table)

    def read_months(self, table: str, months: list[str], columns: list[str]) -> pd.DataFrame:
        """`columns` of the rows of `months` of `table`, read with pyarrow (no Spark)."""
        return warehouse.read_months(self.root, table, months, columns).to_pandas()

    def write_month(self, table: str, month: str, rows: pa.Table) -> None:
        warehouse.write_month(self.root, table, month, rows)


class ModelStoreResource(ConfigurableResource):
    root: str
    # Unattended promotion: a candidate at most this much less accurate than the current model on
    # the same held-out rows (the forest's run-to-run noise) is promoted; a worse one is only kept.
    promotion_tolerance: float = 0.005
    # Challengers kept in the champion's shadow; adding one more displaces the oldest.
    max_challengers: int = 2
    # Whether the stream explains every answer it serves (and every shadow prediction).
    explain_answers: bool = True

    def store(self) -> ModelStore:
        return ModelStore(Path(self.root))


def build_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    return {
        "spark": SparkResource(spark_config={"spark.remote": settings.spark_remote},
                               niceness=settings.batch_niceness),
        "kafka": KafkaResource(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_topic=settings.request_topic,
            request_topic_partitions=settings.request_topic_partitions,
            request_topic_replication_factor=settings.request_topic_replication_factor,
            request_topic_min_insync_replicas=settings.request_topic_min_insync_replicas,
            consumer_group=settings.consumer_group,
            consumer_session_timeout_ms=settings.consumer_session_timeout_ms,
            max_message_bytes=settings.max_message_bytes,
            stream_workers=settings.stream_workers,
        ),
        "mongo": MongoResource(uri=settings.mongo_uri, database=settings.mongo_database),
        "warehouse": WarehouseResource(root=str(settings.warehouse_dir),
                                       bts_dir=str(settings.bts_dir)),
        "model_store": ModelStoreResource(root=str(settings.model_store_dir),
                                          promotion_tolerance=settings.promotion_tolerance,
                                          max_challengers=settings.max_challengers,
                                          explain_answers=settings.explain_answers),
    }
