"""Start, health-check and stop the local Kafka broker, MongoDB-protocol server and Spark server.

    python -m flight_platform.local.services up|down|status

- kafka: Apache Kafka in KRaft mode (each node both broker and controller), from the jars
  `make install` copies from Maven Central (scripts/kafka/pom.xml). One node per loopback address in
  FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS: one by default, three make a replicated cluster with a
  3-voter controller quorum. Each node's storage is formatted once and lives under
  `settings.services_dir / kafka-N`, so topics, messages and group offsets survive restarts.
- mongo: SecantusDB's `secantusd-py` (GPL-2.0), run as its own process and spoken to over the wire
  only; its WiredTiger files live under the data dir and survive restarts.
- spark: a Spark Connect server from the pinned pyspark wheel, holding the one long-lived Spark
  driver (local mode, or a client of the cluster FLIGHT_PLATFORM_SPARK_MASTER names) that every
  batch run works on through a session of its own. It is batch work: it runs at
  FLIGHT_PLATFORM_BATCH_NICENESS, on the CPU the stream and the web app leave.

A service whose endpoint (from settings) is not on loopback is external: it is left alone, so a real
Kafka cluster or mongod is used unchanged. Pid and log files live in `settings.services_dir`; `down`
stops only processes this manager started.
"""

import argparse
import base64
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pyspark
from pymongo.uri_parser import parse_uri

from flight_platform.clients import kafka, mongo, spark
from flight_platform.local import processes
from flight_platform.settings import Settings, free_port, load_settings

STARTUP_TIMEOUT_S = 60.0  # a Kafka node answers in about 4 s on an idle box, 2 JVMs on 2 cores take longer
SHUTDOWN_TIMEOUT_S = 30.0  # a Kafka node's controlled shutdown moves its leaderships first


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Service(ABC):
    name: str
    host: str
    port: int
    executable: str
    settings: Settings

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_external(self) -> bool:
        return not _is_loopback(self.host)

    @property
    def pid_file(self) -> Path:
        return self.settings.services_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.settings.services_dir / f"{self.name}.log"

    @property
    def identity(self) -> str:
        """A string only this service's command line holds: guards against a recycled pid."""
        return self.executable

    @property
    def niceness(self) -> int:
        """Its CPU priority, as `nice` (0: an equal share)."""
        return 0

    @abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> dict[str, str] | None:
        """Its environment (None: this process's)."""
        return None

    @abstractmethod
    def is_healthy(self) -> bool:
        """Whether it answers a real request (a Kafka metadata request, a Mongo `ping`)."""

    def initialize(self) -> None:  # noqa: B027 - most services need nothing here
        """Set up its files before it starts."""

    def prepare(self) -> None:  # noqa: B027 - most services need nothing here
        """Set up what clients expect, once every service answers and before any client starts."""


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


@dataclass(frozen=True)
class MongoServer(Service):
    @property
    def storage_dir(self) -> Path:
        return self.settings.services_dir / "mongo"

    def command(self) -> list[str]:
        return [self.executable, "--host", self.host, "--port", str(self.port),
                "--storage-path", str(self.storage_dir), "--cache-size", "256M",
                # No replica-set oplog: nothing here uses change streams, and without it an
                # insert costs about 40% less (8,800 vs 5,000 docs/s in bulk on 2 cores).
                "--standalone", "--log-level", "WARNING"]

    def is_healthy(self) -> bool:
        return mongo.server_reachable(self.settings.mongo_uri)


SPARK_HOME = Path(pyspark.__file__).parent  # the pinned wheel ships Spark's jars and scripts
SPARK_CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_environment(local_ip: str) -> dict[str, str]:
    """This process's environment for a Spark daemon of the pinned wheel bound to `local_ip` (Spark
    picks its local address from the environment before it reads any config), whose Python
    workers run this virtualenv's Python."""
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": local_ip,
            "PYSPARK_PYTHON": sys.executable}


@dataclass(frozen=True)
class SparkConnectServer(Service):
    @property
    def remote(self) -> str:
        return f"sc://{self.endpoint}"

    @property
    def identity(self) -> str:
        return f"spark.connect.grpc.binding.port={self.port}"

    @property
    def niceness(self) -> int:
        return self.settings.batch_niceness

    def command(self) -> list[str]:
        settings = self.settings
        config = {
            "spark.connect.grpc.binding.address": self.host,
            "spark.connect.grpc.binding.port": self.port,
            "spark.driver.host": settings.spark_driver_host,
            "spark.driver.bindAddress": settings.spark_driver_host,
            "spark.ui.enabled": "false",
            "spark.log.level": "WARN",
            # Defaults of every session, sized for a small box.
            "spark.sql.shuffle.partitions": 4,
            "spark.default.parallelism": 2,
            "spark.sql.session.timeZone": "UTC",
            # The session of a run that died without closing it is dropped after this idle time,
            # with what it checkpointed (Spark's default keeps it an hour); longer than any step
            # of a live run spends without calling Spark.
            "spark.connect.session.manager.defaultSessionTimeout": "30m",
        }
        # spark-submit execs the JVM: the server's pid is the one started.
        return [self.executable, "--class", SPARK_CONNECT_SERVER, "--name", "flight_platform",
                "--master", settings.spark_master, "--driver-memory", settings.spark_driver_memory,
                *(arg for key, value in config.items() for arg in ("--conf", f"{key}={value}"))]

    def environment(self) -> dict[str, str]:
        return spark_environment(self.settings.spark_driver_host)

    def is_healthy(self) -> bool:
        return port_in_use(self.host, self.port) and spark.server_reachable(self.remote)


def services(settings: Settings) -> list[Service]:
    """The Kafka nodes (one per bootstrap server), the Mongo-protocol server, the Spark server."""
    cluster = tuple(settings.kafka_bootstrap_servers.split(","))
    java = shutil.which("java") or "java"
    mongo_host, mongo_port = parse_uri(settings.mongo_uri)["nodelist"][0]
    secantus = str(Path(sysconfig.get_path("scripts")) / "secantusd-py")
    nodes = []
    for node_id, endpoint in enumerate(cluster, start=1):
        host, port = endpoint.strip().rsplit(":", 1)
        nodes.append(KafkaNode(f"kafka-{node_id}", host, int(port), java, settings, node_id, cluster))
    spark_host, spark_port = spark.endpoint(settings.spark_remote)
    return [*nodes, MongoServer("mongo", mongo_host, int(mongo_port), secantus, settings),
            SparkConnectServer("spark", spark_host, spark_port, str(SPARK_HOME / "bin" / "spark-submit"),
                               settings)]


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    return [service for service in services(settings) if isinstance(service, KafkaNode)]


def spark_server(settings: Settings) -> SparkConnectServer:
    return next(service for service in services(settings) if isinstance(service, SparkConnectServer))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def running_pid(service: Service) -> int | None:
    """The pid of the process this manager started for `service`, if it is still alive."""
    try:
        pid = int(service.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    # Guards against a recycled pid: it must still be our command.
    command = processes.command_line(pid)
    return pid if command is not None and service.identity in command else None


def start(service: Service) -> str:
    """Start `service` and wait until it answers. Returns a one-line report."""
    return start_all([service])[service.name]


def start_all(to_start: list[Service]) -> dict[str, str]:
    """Start the services together and wait until each answers (the nodes of a Kafka cluster only
    answer once a majority of its controllers runs), then prepare them in order. Returns a
    one-line report per service name."""
    reports, started = {}, []
    try:
        for service in to_start:
            if service.is_external:
                reports[service.name] = f"external at {service.endpoint}: not managed here"
            elif (pid := running_pid(service)) is not None:
                reports[service.name] = (f"already running (pid {pid}) at {service.endpoint}: not "
                                         f"starting another")
            else:
                started.append((service, _launch(service)))
    except ServiceError:  # a port is taken: none is left running (none has served anything yet)
        for service, _ in started:
            kill(service)
        raise
    began = time.monotonic()

    def answering(service: Service, process: subprocess.Popen) -> bool:
        if service.name not in reports and service.is_healthy():
            reports[service.name] = (f"started (pid {process.pid}) at {service.endpoint} in "
                                     f"{time.monotonic() - began:.1f}s")
        return service.name in reports

    try:
        for service, process in started:
            processes.wait_until(lambda s=service, p=process: answering(s, p), STARTUP_TIMEOUT_S,
                                 f"{service.name} to answer; see {service.log_file}", interval=0.1,
                                 process=process)
    except (RuntimeError, TimeoutError) as error:
        stop_all([service for service, _ in started])
        raise ServiceError(str(error)) from None
    for service, _ in started:
        service.prepare()
    return {service.name: reports[service.name] for service in to_start}


def _launch(service: Service) -> subprocess.Popen:
    if port_in_use(service.host, service.port):
        raise ServiceError(
            f"{service.name}: {service.endpoint} is already taken by a process this manager did not "
            f"start. Stop it, or point FLIGHT_PLATFORM_* settings at another port.")
    service.settings.services_dir.mkdir(parents=True, exist_ok=True)
    service.initialize()
    process = processes.start(service.command(), service.log_file, env=service.environment(),
                              cwd=service.settings.services_dir, niceness=service.niceness)
    service.pid_file.write_text(str(process.pid))
    return process


def stop(service: Service) -> str:
    return stop_all([service])[service.name]


def stop_all(to_stop: list[Service]) -> dict[str, str]:
    """SIGTERM the services together, SIGKILL what is left after SHUTDOWN_TIMEOUT_S, and
    return once every one has ended (its port is free again). Returns a one-line report per
    service name."""
    reports, stopping = {}, {}
    for service in to_stop:
        if service.is_external:
            reports[service.name] = f"external at {service.endpoint}: not managed here"
            continue
        pid = running_pid(service)
        service.pid_file.unlink(missing_ok=True)
        if pid is None:
            reports[service.name] = "not running"
        else:
            stopping[service.name] = pid
    killed = processes.terminate(list(stopping.values()), SHUTDOWN_TIMEOUT_S)
    for name, pid in stopping.items():
        reports[name] = (f"killed (pid {pid}) after {SHUTDOWN_TIMEOUT_S:.0f}s without exiting on "
                         f"SIGTERM" if pid in killed else f"stopped (pid {pid})")
    return {service.name: reports[service.name] for service in to_stop}


def kill(service: Service) -> str:
    """kill -9, as a crash or the OOM killer would; the service gets no chance to clean up."""
    pid = running_pid(service)
    service.pid_file.unlink(missing_ok=True)
    if pid is None:
        return "not running"
    processes.kill([pid])
    return f"killed (pid {pid})"


def describe(service: Service) -> tuple[bool, str]:
    """(healthy, one-line status) for `status`."""
    if service.is_external:
        healthy = service.is_healthy()
        return healthy, f"external at {service.endpoint}: {'reachable' if healthy else 'UNREACHABLE'}"
    pid = running_pid(service)
    if pid is None:
        return False, "stopped"
    healthy = service.is_healthy()
    return healthy, f"running (pid {pid}) at {service.endpoint}: {'healthy' if healthy else 'NOT ANSWERING'}"


def up(settings: Settings) -> None:
    for name, report in start_all(services(settings)).items():
        print(f"{name:7} {report}", flush=True)


def down(settings: Settings) -> None:
    for name, report in stop_all(services(settings)).items():
        print(f"{name:7} {report}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flight_platform.local.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    command = parser.parse_args(argv).command
    settings = load_settings()
    if command == "up":
        try:
            up(settings)
        except ServiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    elif command == "down":
        down(settings)
    else:
        all_healthy = True
        for service in services(settings):
            healthy, line = describe(service)
            all_healthy &= healthy
            print(f"{service.name:7} {line}")
        return 0 if all_healthy else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
