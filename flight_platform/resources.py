"""Dagster resources: Spark, Kafka, MongoDB, the Parquet warehouse and the model store.

Each is a ConfigurableResource whose defaults come from `flight_platform.settings`, so the same
definitions run against the local stack or a cluster by environment alone.
"""

import os
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow as pa
from dagster import ConfigurableResource
from dagster_pyspark import LazyPySparkResource
from kafka import KafkaConsumer, KafkaProducer
from pydantic import PrivateAttr
from pymongo import MongoClient
from pymongo.database import Database

from flight_platform import warehouse
from flight_platform.clients import kafka, mongo
from flight_platform.core.model_store import ModelStore
from flight_platform.settings import Settings


def spark_config(settings: Settings) -> dict[str, str]:
    """Spark for a small box: driver on loopback, no UI, few shuffle partitions, Arrow transfers;
    the driver JVM maps the classes the assets use from an archive (built by `make install`)."""
    config = {
        "spark.master": settings.spark_master,
        "spark.app.name": "flight_platform",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.driver.host": settings.spark_driver_host,
        "spark.driver.bindAddress": settings.spark_driver_host,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "WARN",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "2",
        "spark.sql.session.timeZone": "UTC",
        # Also avoids Spark 4's ANSI cast overflow on NaN when converting pandas frames.
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    archive = settings.spark_class_archive
    if archive and archive.exists():
        config["spark.driver.extraJavaOptions"] = f"-XX:SharedArchiveFile={archive}"
    return config


SPARK_DRIVER_CLASS = "org.apache.spark.deploy.SparkSubmit"  # on the local driver JVM's command line


class SparkResource(LazyPySparkResource):
    """A LazyPySparkResource whose driver JVM, where local-mode Spark does all its work, runs at a
    lower CPU priority than serving (`niceness`, 0-19; 0 shares the CPU equally): on a box shared
    with the stream and the web app, a retrain takes only the CPU they leave."""

    niceness: int = 19
    _lowered: bool = PrivateAttr(default=False)

    @property
    def spark_session(self) -> Any:
        session = super().spark_session
        if not self._lowered and self.niceness:
            for jvm in spark_driver_jvms():
                lower_priority(jvm, self.niceness)
            self._lowered = True
        return session


def spark_driver_jvms() -> list[psutil.Process]:
    """The local Spark driver JVMs this process started (one, shared by every session)."""
    jvms = []
    for child in psutil.Process().children(recursive=True):
        try:
            if SPARK_DRIVER_CLASS in child.cmdline():
                jvms.append(child)
        except psutil.Error:  # ended since it was listed (a PySpark worker, say)
            pass
    return jvms


def lower_priority(process: psutil.Process, niceness: int) -> None:
    """Set every thread of `process` to `niceness`. On Linux a priority belongs to a thread, and a
    thread starts with its creator's, so the threads the JVM creates later inherit it too."""
    for thread in process.threads():
        try:
            os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
        except ProcessLookupError:  # the thread ended since it was listed
            pass


def spark_resource(settings: Settings) -> SparkResource:
    """One SparkSession per process, created on first use (assets that never touch Spark start no
    JVM), and shared by every asset and check of a run (the in-process executor keeps them in one
    process); its JVM at FLIGHT_PLATFORM_BATCH_NICENESS."""
    # Spark picks its local address from the environment before reading any config.
    os.environ.setdefault("SPARK_LOCAL_IP", settings.spark_driver_host)
    return SparkResource(spark_config=spark_config(settings), niceness=settings.batch_niceness)


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
        "spark": spark_resource(settings),
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
