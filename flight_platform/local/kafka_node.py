"""One node of the local Apache Kafka cluster (KRaft: broker and controller in one JVM), from the jars
`make install` copies from Maven Central (scripts/kafka/pom.xml)."""

import base64
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from flight_platform.clients import kafka
from flight_platform.local.service import STARTUP_TIMEOUT_S, Service, ServiceError
from flight_platform.settings import free_port


@dataclass(frozen=True)
class KafkaNode(Service):
    """One node of the local Kafka cluster: broker and KRaft controller in one JVM.

    Every node of the cluster is a voter of the controller quorum; the controllers listen on
    ports chosen when the cluster is first formatted and kept, with its id, in `cluster_file`."""

    node_id: int = 1
    cluster: tuple[str, ...] = ()  # every node's client endpoint, node_id - 1 indexing it

    @property
    def directory(self) -> Path:
        return self.settings.services_dir / self.name

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def cluster_file(self) -> Path:
        return self.settings.services_dir / "kafka-cluster.json"

    @property
    def identity(self) -> str:
        return str(self.config_file)

    def _java(self, *main: str, heap: str) -> list[str]:
        return [self.executable, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                "-cp", str(self.settings.kafka_libs_dir / "*"), *main]

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_file), heap=self.settings.kafka_heap)

    def is_healthy(self) -> bool:
        return kafka.broker_reachable(self.endpoint)

    def initialize(self) -> None:
        """Write the node's configuration (from settings, every start) and format its storage
        (once: a formatted log dir keeps its cluster id and data)."""
        if not (self.settings.kafka_libs_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise ServiceError(f"Apache Kafka's jars are not in {self.settings.kafka_libs_dir}: run "
                               f"`make install` (it copies them from Maven Central with mvn).")
        self.directory.mkdir(parents=True, exist_ok=True)
        cluster = self._cluster()
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in
                                            self._config(cluster["controller_ports"]).items()))
        (self.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        if not (self.directory / "log" / "meta.properties").is_file():
            subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster["cluster_id"],
                                      "-c", str(self.config_file), "--ignore-formatted", heap="256m"),
                           check=True, capture_output=True, timeout=STARTUP_TIMEOUT_S)

    def _cluster(self) -> dict:
        """The cluster's id and controller ports: made once, for every node, and kept."""
        if self.cluster_file.is_file():
            cluster = json.loads(self.cluster_file.read_text())
            if len(cluster["controller_ports"]) == len(self.cluster):
                return cluster
            raise ServiceError(
                f"{self.cluster_file} describes a {len(cluster['controller_ports'])}-node Kafka cluster, "
                f"but FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS names {len(self.cluster)} nodes. Point "
                f"FLIGHT_PLATFORM_DATA_DIR elsewhere, or delete {self.settings.services_dir}/kafka-* "
                f"and that file to start an empty cluster.")
        cluster = {"cluster_id": _kafka_uuid(), "controller_ports": [free_port() for _ in self.cluster]}
        self.cluster_file.write_text(json.dumps(cluster))
        return cluster

    def _config(self, controller_ports: list[int]) -> dict[str, object]:
        nodes = len(self.cluster)
        controller = f"{self.host}:{controller_ports[self.node_id - 1]}"
        replicas, min_insync = min(3, nodes), min(2, nodes)
        return {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": ",".join(
                f"{i}@{endpoint.rsplit(':', 1)[0]}:{port}" for i, (endpoint, port)
                in enumerate(zip(self.cluster, controller_ports, strict=True), start=1)),
            "listeners": f"PLAINTEXT://{self.endpoint},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.endpoint}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.directory / "log",
            # Internal topics replicated as far as the nodes allow (Kafka's defaults assume 3).
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_insync,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_insync,
            # Topics are created on purpose, with their partitions (see clients.kafka.ensure_topic).
            "auto.create.topics.enable": "false",
            # A first member is not held back waiting for others (the default waits 3 s).
            "group.initial.rebalance.delay.ms": 0,
            # Admit the consumers' session timeout even when it is set below Kafka's 6 s default.
            "group.min.session.timeout.ms": min(6000, self.settings.consumer_session_timeout_ms),
            # A node that stops heartbeating is fenced after 4 s (default 9 s): until then acks=all
            # produces wait for it as an in-sync replica of every partition it holds.
            "broker.heartbeat.interval.ms": 1000,
            "broker.session.timeout.ms": 4000,
            # Two cores are shared with Spark and the stream: fewer threads than Kafka's defaults.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
        }

    def prepare(self) -> None:
        kafka.ensure_request_topic(self.settings)


# The broker logs its own warnings and errors, and that it started; no request traffic.
LOG4J2_PROPERTIES = """\
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""
KAFKA_VERSION = "4.4.0"  # as pinned in scripts/kafka/pom.xml


def _kafka_uuid() -> str:
    """A cluster id as `kafka-storage.sh random-uuid` makes one (without starting a JVM)."""
    while (value := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass  # Kafka never issues an id starting with '-': it would read as a command-line flag
    return value

