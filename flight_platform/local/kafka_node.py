"""One node of the local Apache Kafka cluster (KRaft: broker and controller in one JVM), from the jars
`make install` copies from Maven Central (scripts/kafka/pom.xml).

Secured by default (FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL=SASL_SSL): clients and the other nodes
connect over TLS with a certificate of the local CA (local.certificates) and log in with SCRAM; the
controllers authenticate each other with a user of their own (PLAIN, over TLS: KRaft controllers
cannot look SCRAM credentials up in the metadata they serve); the StandardAuthorizer refuses
whatever no ACL allows (clients.kafka_access grants each role its rights). The admin user is made
when the storage is formatted, the other roles' users by the admin step. PLAINTEXT runs it open,
for a developer who asks for that.
"""

import base64
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from flight_platform.clients import kafka_access
from flight_platform.clients.kafka_diagnosis import diagnose_role
from flight_platform.clients.security import Password, Role
from flight_platform.local import certificates
from flight_platform.local.service import STARTUP_TIMEOUT_S, Service, ServiceError
from flight_platform.settings import Settings, free_port

LOCAL_PROTOCOLS = ("SASL_SSL", "PLAINTEXT")
CONTROLLER_USER = "controller"


def class_archive(settings: Settings) -> Path:
    """The JVM's class-data archive of Kafka's classes, beside the jars it was made from."""
    return settings.kafka_libs_dir.parent / "kafka-classes.jsa"


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
    def is_jvm(self) -> bool:
        return True

    @property
    def identity(self) -> str:
        return str(self.config_file)

    def _java(self, *main: str, heap: str) -> list[str]:
        # With the archive, the JVM maps Kafka's classes already parsed and verified instead of
        # loading them from the jars: a node starts on ~0.6x the CPU. `make install` makes it, and
        # tries it before putting it here (services.archive_kafka_classes).
        archive = class_archive(self.settings)
        sharing = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
        return [self.executable, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                *sharing, *self.settings.kafka_jvm_options, "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                "-cp", str(self.settings.kafka_libs_dir / "*"), *main]

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_file), heap=self.settings.kafka_heap)

    @property
    def secured(self) -> bool:
        return self.settings.kafka_security.protocol == "SASL_SSL"

    @property
    def controller_password(self) -> Password:
        """The controllers' own password (only they use it: it is not a role of the platform)."""
        file = self.settings.secrets_dir / "kafka-controller.password"
        return Password("FLIGHT_PLATFORM_KAFKA_CONTROLLER_PASSWORD", file)

    def is_healthy(self) -> bool:
        return diagnose_role(self.settings, Role.ADMIN, self.endpoint).ok

    def initialize(self) -> None:
        """Write the node's configuration (from settings, every start) and format its storage
        (once: a formatted log dir keeps its cluster id and data)."""
        if not (self.settings.kafka_libs_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise ServiceError(f"Apache Kafka's jars are not in {self.settings.kafka_libs_dir}: run "
                               f"`make install` (it copies them from Maven Central with mvn).")
        security = self.settings.kafka_security
        if security.protocol not in LOCAL_PROTOCOLS:
            raise ServiceError(f"the local Kafka broker serves {' or '.join(LOCAL_PROTOCOLS)}, not "
                               f"FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL={security.protocol}: point "
                               f"FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS at a cluster that does")
        if self.secured and not security.sasl_mechanism.startswith("SCRAM-"):
            raise ServiceError(f"the local Kafka broker logs clients in with SCRAM, not "
                               f"FLIGHT_PLATFORM_KAFKA_SASL_MECHANISM={security.sasl_mechanism}")
        self.directory.mkdir(parents=True, exist_ok=True)
        cluster = self._cluster()
        config = self._config(cluster["controller_ports"])
        if self.secured:
            config |= self._security_config()
        # Owner-only: it holds the node's own passwords.
        certificates.write_private(self.config_file, "".join(f"{key}={value}\n"
                                                             for key, value in config.items()).encode())
        (self.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        if not (self.directory / "log" / "meta.properties").is_file():
            self._format(cluster["cluster_id"])

    def _format(self, cluster_id: str) -> None:
        """Format the storage; a secured cluster gets its admin user here, the one user a cluster
        can have before anyone may create users. The tool prints the credential's salted keys:
        its output is never shown."""
        command = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                             "-c", str(self.config_file), "--ignore-formatted", heap="256m")
        if self.secured:
            security = self.settings.kafka_security
            admin = security.logins[Role.ADMIN]
            command += ["--add-scram", f"{security.sasl_mechanism}=[name={admin.user},"
                                       f"password={admin.password.read()}]"]
        formatted = subprocess.run(command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
        if formatted.returncode != 0:
            errors = [line for line in formatted.stderr.splitlines() if "password" not in line.lower()]
            raise ServiceError(f"{self.name}: formatting {self.directory / 'log'} failed "
                               f"({formatted.returncode}): {' '.join(errors)[-2000:]}")

    def _security_config(self) -> dict[str, object]:
        """SASL_SSL between clients, nodes and controllers; every request authorized by ACL."""
        security = self.settings.kafka_security
        admin = security.logins[Role.ADMIN]
        for password in (*(login.password for login in security.logins.values()), self.controller_password):
            password.create_if_missing()  # each role's user is made with it (see prepare)
        hosts = [endpoint.rsplit(":", 1)[0] for endpoint in self.cluster]
        server = certificates.ensure_server_certificate(self.settings.secrets_dir, "kafka-server", hosts)
        ca_file, _ = certificates.ensure_ca(self.settings.secrets_dir)
        mechanism = security.sasl_mechanism
        controller_password = self.controller_password.read()
        return {
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config":
                f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{admin.user}" password="{admin.password.read()}";',
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                f'username="{CONTROLLER_USER}" password="{controller_password}" '
                f'user_{CONTROLLER_USER}="{controller_password}";',
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": server.pem_file,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": ca_file,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The controllers must be super users, or the controller refuses their registration.
            "super.users": f"User:{admin.user};User:{CONTROLLER_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

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
        listener = "SASL_SSL" if self.secured else "PLAINTEXT"  # clients' and the nodes' between them
        return {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": ",".join(
                f"{i}@{endpoint.rsplit(':', 1)[0]}:{port}" for i, (endpoint, port)
                in enumerate(zip(self.cluster, controller_ports, strict=True), start=1)),
            "listeners": f"{listener}://{self.endpoint},CONTROLLER://{controller}",
            "advertised.listeners": f"{listener}://{self.endpoint}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:{listener}",
            "log.dirs": self.directory / "log",
            # Internal topics replicated as far as the nodes allow (Kafka's defaults assume 3).
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_insync,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_insync,
            # Topics are created on purpose, with their partitions (see clients.kafka_access).
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
        if self.secured:
            kafka_access.create_users(self.settings)
        kafka_access.prepare(self.settings)


# The node logs its own warnings and errors, its start and stop, refused logins and denied requests;
# no request traffic.
LOG4J2_PROPERTIES = """\
# Log4j's own shutdown hook would stop logging while the node's hook still shuts it down.
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
# Refused logins (Selector) and requests the ACLs deny (the authorizer): what an operator looks for.
logger.selector.name = org.apache.kafka.common.network.Selector
logger.selector.level = INFO
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
# Its lifecycle (a few lines per start and stop): where a stop waits, when it does.
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.lifecycle.name = org.apache.kafka.server.BrokerLifecycleManager
logger.lifecycle.level = INFO
logger.controller.name = kafka.server.ControllerServer
logger.controller.level = INFO
"""
KAFKA_VERSION = "4.4.0"  # as pinned in scripts/kafka/pom.xml


def _kafka_uuid() -> str:
    """A cluster id as `kafka-storage.sh random-uuid` makes one (without starting a JVM)."""
    while (value := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass  # Kafka never issues an id starting with '-': it would read as a command-line flag
    return value

