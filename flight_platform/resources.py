"""Dagster resources: Spark, Kafka, MongoDB, the Parquet warehouse and the model store.

Each is a ConfigurableResource whose defaults come from `flight_platform.settings`, so the same
definitions run against the local stack or a cluster by environment alone.
"""

import os
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
from dagster import ConfigurableResource, EnvVar
from dagster_pyspark import LazyPySparkResource
from kafka import KafkaConsumer, TopicPartition
from pydantic import PrivateAttr
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pyspark.sql import SparkSession

from flight_platform import warehouse
from flight_platform.clients import kafka, mongo, spark
from flight_platform.clients.security import (
    CredentialError,
    KafkaSecurity,
    Login,
    MongoSecurity,
    Password,
    Role,
)
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
    call_retries: int  # while the server is unreachable (settings.spark_call_retries)

    def setup_for_execution(self, context) -> None:
        if self.niceness:
            lower_priority(psutil.Process(), self.niceness)

    @property
    def spark_session(self) -> SparkSession:
        if self._spark_session is None:
            super().spark_session.client.set_retry_policies([spark.retry_policy(self.call_retries)])
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
    """The stream's Kafka clients, logged in as the stream's user. A password the environment
    holds arrives through `EnvVar`, so the UI shows the variable's name; the local stack's is read
    from `password_file` when a client is made. Neither is ever part of the run's config."""

    bootstrap_servers: str
    request_topic: str
    consumer_group: str
    consumer_session_timeout_ms: int
    max_message_bytes: int
    # Stream runs the supervisor keeps alive in the consumer group, one per slot.
    stream_workers: int = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = None
    ssl_key_password_file: str | None = None
    ssl_check_hostname: bool = True

    def security(self) -> KafkaSecurity:
        """The stream's login and the TLS files, as clients.security builds clients from them."""
        def optional_path(value: str | None) -> Path | None:
            return Path(value) if value else None

        variable = "FLIGHT_PLATFORM_KAFKA_STREAM_PASSWORD"
        login = Login(self.user or "", Password(variable, Path(self.password_file or ""), self.password),
                      "FLIGHT_PLATFORM_KAFKA_STREAM_USER")
        key_password = None
        if self.ssl_key_password is not None or self.ssl_key_password_file:
            key_password = Password("FLIGHT_PLATFORM_KAFKA_SSL_KEY_PASSWORD",
                                    Path(self.ssl_key_password_file or ""), self.ssl_key_password)
        return KafkaSecurity(self.security_protocol, self.sasl_mechanism, {Role.STREAM: login},
                             optional_path(self.ssl_cafile), optional_path(self.ssl_certfile),
                             optional_path(self.ssl_keyfile), key_password, self.ssl_check_hostname)

    def connection(self) -> kafka.Connection:
        return kafka.connection_to(self.bootstrap_servers, self.security(), Role.STREAM)

    def who(self) -> str:
        """The stream's login, for messages (never the password)."""
        return self.security().describe(Role.STREAM)

    def request_consumer(self) -> KafkaConsumer:
        return kafka.create_consumer(self.connection(), self.consumer_group,
                                     self.request_topic, self.consumer_session_timeout_ms)

    def request_topic_partition_count(self) -> int:
        return kafka.partition_count(self.connection(), self.request_topic)

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        return kafka.end_offsets(self.connection(), partitions, timeout_ms)


def password_fields(password: Password, field: str = "password") -> dict[str, object]:
    """A password as a resource takes it: through `EnvVar` when the environment holds it (the UI
    shows the variable's name, never the value), else the path of the file that holds it."""
    if password.value is not None:
        return {field: EnvVar(password.variable)}
    return {f"{field}_file": str(password.file)}


def kafka_resource(settings: Settings) -> KafkaResource:
    security = settings.kafka_security
    login = security.logins[Role.STREAM]
    return KafkaResource(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_topic=settings.request_topic,
        consumer_group=settings.consumer_group,
        consumer_session_timeout_ms=settings.consumer_session_timeout_ms,
        max_message_bytes=settings.max_message_bytes,
        stream_workers=settings.stream_workers,
        security_protocol=security.protocol,
        sasl_mechanism=security.sasl_mechanism,
        user=login.user,
        **(password_fields(login.password) if security.uses_sasl else {}),
        ssl_cafile=security.ssl_cafile and str(security.ssl_cafile),
        ssl_certfile=security.ssl_certfile and str(security.ssl_certfile),
        ssl_keyfile=security.ssl_keyfile and str(security.ssl_keyfile),
        **(password_fields(security.ssl_key_password, "ssl_key_password")
           if security.ssl_key_password else {}),
        ssl_check_hostname=security.ssl_check_hostname,
    )


class MongoResource(ConfigurableResource):
    """A MongoDB database, logged in as `role`'s user (web, stream, batch, admin; with
    `auth_enabled` false, as the URI says). A password the environment holds arrives through
    `EnvVar`, so the UI shows the variable's name; the local stack's is read from `password_file`
    when the client is made. Neither is ever part of the run's config."""

    uri: str
    database: str
    role: str = Role.BATCH.value
    auth_enabled: bool = True
    user: str | None = None
    auth_source: str = "admin"
    password: str | None = None
    password_file: str | None = None

    _client: MongoClient | None = PrivateAttr(default=None)

    def security(self) -> MongoSecurity:
        role = Role(self.role)
        variable = f"FLIGHT_PLATFORM_MONGO_{role.name}_PASSWORD"
        if self.auth_enabled and self.password is None and not self.password_file:
            raise CredentialError(f"no MongoDB password for the {role.value} role: set {variable} "
                                  f"or {variable}_FILE")
        login = Login(self.user or f"flight_{role.value}",
                      Password(variable, Path(self.password_file or ""), self.password),
                      f"FLIGHT_PLATFORM_MONGO_{role.name}_USER")
        return MongoSecurity(self.auth_enabled, {role: login}, self.auth_source)

    def get_database(self) -> Database:
        """The database, as `role`'s user. A refused login fails here, with a CredentialError
        naming the user and the settings that give it and its password; an unreachable server is
        left to the caller's own operations (the stream retries them)."""
        if self._client is None:
            role, security = Role(self.role), self.security()
            client = mongo.connect(self.uri, security, role)
            try:
                mongo.check_login(client, security, role)
            except CredentialError:
                client.close()
                raise
            except PyMongoError:
                pass
            self._client = client
        return self._client[self.database]

    def teardown_after_execution(self, context) -> None:
        if self._client is not None:
            self._client.close()


def mongo_resource(settings: Settings, role: Role, database: str | None = None) -> MongoResource:
    """The database (settings.mongo_database unless `database`) as `role`'s user."""
    security = settings.mongo_security
    login = security.logins[role]
    return MongoResource(uri=settings.mongo_uri, database=database or settings.mongo_database,
                         role=role.value, auth_enabled=security.enabled, user=login.user,
                         auth_source=security.auth_source,
                         **(password_fields(login.password) if security.enabled else {}))


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

    def read_table(self, table: str, columns: list[str], filters=None) -> pd.DataFrame:
        """`columns` of every month of `table` narrowed by `filters` (a pyarrow expression)."""
        return warehouse.read_table(self.root, table, columns, filters).to_pandas()

    def write_month(self, table: str, month: str, rows: pa.Table) -> None:
        warehouse.write_month(self.root, table, month, rows)


class ModelStoreResource(ConfigurableResource):
    root: str
    # The months a training learns unless its run config says (the latest N; 0: every month).
    training_recent_months: int = 0
    # Unattended promotion: a candidate at most this much less accurate than the current model on
    # the same held-out rows (the forest's run-to-run noise) is promoted; a worse one is only kept.
    promotion_tolerance: float = 0.005
    # Challengers kept in the champion's shadow; adding one more displaces the oldest.
    max_challengers: int = 2
    # Whether the stream explains every answer it serves (and every shadow prediction).
    explain_answers: bool = True
    # What live outcomes do to the champion (batch.champion): "apply" (promote a better
    # challenger, restore a better predecessor), "recommend" (record the decisions only) or "off".
    live_decisions: str = "apply"
    promotion_margin: float = 0.01  # the smallest live accuracy difference acted on
    decision_alpha: float = 0.05  # the rate of false decisions, however often outcomes come
    decision_min_pairs: int = 1000  # flights both versions scored before any decision
    # The replaced champion is scored beside its successor (and restored if better) until this
    # many flights both scored are judged, or this many days have passed.
    probation_pairs: int = 20_000
    probation_days: float = 14.0

    @property
    def probation(self) -> bool:
        """Whether a replaced champion is kept on probation: only live decisions can use it."""
        return self.live_decisions != "off"

    def store(self) -> ModelStore:
        return ModelStore(Path(self.root))


class MetricsResource(ConfigurableResource):
    """Where a stream worker serves its metrics (`host`, a port picked per worker) and announces
    them for Prometheus' file-based discovery (`targets_dir`)."""

    host: str
    targets_dir: str


def build_resources(settings: Settings) -> dict[str, ConfigurableResource]:
    return {
        "spark": SparkResource(spark_config={"spark.remote": settings.spark_remote},
                               niceness=settings.batch_niceness,
                               call_retries=settings.spark_call_retries),
        "kafka": kafka_resource(settings),
        "mongo": mongo_resource(settings, Role.BATCH),
        # The stream logs in as a user of its own, allowed only to read and add answers.
        "stream_mongo": mongo_resource(settings, Role.STREAM),
        "warehouse": WarehouseResource(root=str(settings.warehouse_dir),
                                       bts_dir=str(settings.bts_dir)),
        "model_store": ModelStoreResource(root=str(settings.model_store_dir),
                                          training_recent_months=settings.training_recent_months,
                                          promotion_tolerance=settings.promotion_tolerance,
                                          max_challengers=settings.max_challengers,
                                          explain_answers=settings.explain_answers,
                                          live_decisions=settings.live_decisions,
                                          promotion_margin=settings.promotion_margin_points / 100,
                                          decision_alpha=settings.decision_alpha,
                                          decision_min_pairs=settings.decision_min_pairs,
                                          probation_pairs=settings.probation_pairs,
                                          probation_days=settings.probation_days),
        "metrics": MetricsResource(host=settings.metrics_host,
                                   targets_dir=str(settings.metrics_targets_dir)),
    }
