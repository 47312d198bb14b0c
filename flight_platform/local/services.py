"""Start, health-check and stop the local Kafka broker, MongoDB-protocol server and Spark server.

    python -m flight_platform.local.services up|down|status|archive-kafka-classes

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

`archive-kafka-classes` (run by `make install`) makes the Kafka nodes' class-data archive: a node
started and stopped once, PLAINTEXT in a scratch dir, with the JVM writing the classes it loaded.

A service whose endpoint (from settings) is not on loopback, or whose kind
FLIGHT_PLATFORM_EXTERNAL_SERVICES names, is external: it is left alone, so a real Kafka cluster or
mongod is used unchanged. Pid and log files live in `settings.services_dir`; `down` stops only
processes this manager started.
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pymongo.uri_parser import parse_uri

from flight_platform.clients import kafka_access, spark
from flight_platform.clients.kafka_diagnosis import diagnose_role
from flight_platform.clients.security import CredentialError, Role
from flight_platform.local import processes
from flight_platform.local.kafka_node import KafkaNode, class_archive
from flight_platform.local.mongo_server import MongoServer
from flight_platform.local.service import STARTUP_TIMEOUT_S, Service, ServiceError, port_in_use
from flight_platform.local.spark_server import SPARK_HOME, SparkConnectServer
from flight_platform.settings import Settings, load_settings, private_environment

SHUTDOWN_TIMEOUT_S = 30.0  # a Kafka node's controlled shutdown moves its leaderships first
# A Kafka node still running once too few of its cluster's controllers run to form a quorum waits
# for a controlled-shutdown approval that cannot come (Kafka waits 5 minutes): after this grace,
# in which a node approved just before flushes its logs and exits, it is killed.
QUORUM_LOST_GRACE_S = 3.0
# A JVM that did not end on SIGTERM is asked for its threads' stacks before the kill, to show where
# its shutdown waited; HotSpot ends the dump with this line.
JVM_THREAD_DUMP_END = b"JNI global refs:"
THREAD_DUMP_TIMEOUT_S = 5.0


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
    except Exception:  # a port taken, a setting wrong: none is left running (none has served yet)
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
        for service, _ in started:
            service.prepare()
    except Exception as error:  # noqa: BLE001 - whatever failed, nothing is left half started
        stop_all([service for service, _ in started])
        raise ServiceError(str(error) if isinstance(error, RuntimeError | TimeoutError)
                           else f"{type(error).__name__}: {error}") from None
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
    """SIGTERM the services together, SIGKILL what is left after SHUTDOWN_TIMEOUT_S (a Kafka node
    left without its controller quorum after QUORUM_LOST_GRACE_S), and return once every one has
    ended (its port is free again). Returns a one-line report per service name."""
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
    nodes = [s for s in to_stop if isinstance(s, KafkaNode) and s.name in stopping]
    quorum_lost = _Sustained(_stranded_kafka_nodes(nodes, stopping), QUORUM_LOST_GRACE_S)
    by_pid = {pid: service for service in to_stop if (pid := stopping.get(service.name))}
    dumped: set[int] = set()

    def dump_stuck_jvms(left: list[int]) -> None:
        if quorum_lost.since is None:  # a stranded node's wait is known: nothing to look into
            dumped.update(pid for pid in left if by_pid[pid].is_jvm and _dump_threads(by_pid[pid], pid))

    killed = processes.terminate(list(stopping.values()), SHUTDOWN_TIMEOUT_S, give_up=quorum_lost,
                                 before_kill=dump_stuck_jvms)
    for name, pid in stopping.items():
        if pid not in killed:
            reports[name] = f"stopped (pid {pid})"
        elif quorum_lost.since is not None and name in {node.name for node in nodes}:
            reports[name] = (f"killed (pid {pid}): its cluster's other controllers had stopped, so "
                             f"its controlled shutdown could not be approved")
        else:
            reports[name] = (f"killed (pid {pid}) after {SHUTDOWN_TIMEOUT_S:.0f}s without exiting "
                             f"on SIGTERM")
            if pid in dumped:
                reports[name] += f"; its threads' stacks at the time are in {by_pid[pid].log_file}"
    return {service.name: reports[service.name] for service in to_stop}


def _dump_threads(service: Service, pid: int) -> bool:
    """SIGQUIT a JVM service: it appends every thread's stack to its log and runs on. Whether the
    dump was written within THREAD_DUMP_TIMEOUT_S."""
    if not service.log_file.is_file():  # deleted while it ran: the dump would go nowhere
        return False
    written = service.log_file.stat().st_size
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)

    def dump_end_written() -> bool:
        try:
            with open(service.log_file, "rb") as log:
                log.seek(written)
                return JVM_THREAD_DUMP_END in log.read()
        except OSError:
            return False

    try:
        processes.wait_until(dump_end_written, THREAD_DUMP_TIMEOUT_S, f"{service.name}'s thread dump",
                             interval=0.05)
        return True
    except TimeoutError:
        return False


def _stranded_kafka_nodes(nodes: list[KafkaNode], pids: dict[str, int]) -> Callable[[], bool]:
    """Whether one of the stopping Kafka `nodes` still runs while fewer than a majority of its
    cluster's nodes (each a controller) do. Stopping a whole cluster at once leaves one such node;
    a single node is its own quorum and never is one."""
    if not nodes:
        return lambda: False
    cluster = kafka_nodes(nodes[0].settings)
    staying = [pid for node in cluster if node.name not in pids and (pid := running_pid(node))]

    def stranded() -> bool:
        running = sum(processes.alive(pids[node.name]) for node in nodes)
        controllers = running + sum(processes.alive(pid) for pid in staying)
        return running > 0 and controllers <= len(cluster) // 2

    return stranded


class _Sustained:
    """Whether `condition` has held for `seconds`, counted from the first call that found it true
    (`since`: when that was, None while it does not hold)."""

    def __init__(self, condition: Callable[[], bool], seconds: float):
        self.condition, self.seconds = condition, seconds
        self.since: float | None = None

    def __call__(self) -> bool:
        if not self.condition():
            self.since = None
            return False
        if self.since is None:
            self.since = time.monotonic()
        return time.monotonic() - self.since >= self.seconds


def kill(service: Service) -> str:
    """kill -9, as a crash or the OOM killer would; the service gets no chance to clean up."""
    pid = running_pid(service)
    service.pid_file.unlink(missing_ok=True)
    if pid is None:
        return "not running"
    processes.kill([pid])
    return f"killed (pid {pid})"


def describe(service: Service) -> tuple[bool, str]:
    """(healthy, one-line status) for `status`; a service refusing the manager's login is not
    healthy, and the line says why."""
    try:
        return _describe(service)
    except CredentialError as refused:
        return False, f"LOGIN FAILED: {refused}"


def _describe(service: Service) -> tuple[bool, str]:
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
    if kafka_nodes(settings)[0].is_external:
        print(f"kafka   {kafka_access.prepare_external(settings)}", flush=True)


def check_kafka_logins(settings: Settings) -> None:
    """Every serving role logs in to Kafka, local or external: a wrong password or an unknown user
    is named when the stack starts, rather than as a timeout in the web app or a stream run later."""
    for role in (Role.WEB, Role.STREAM, Role.BATCH):
        try:
            diagnosis = diagnose_role(settings, role)
        except CredentialError as error:
            raise ServiceError(f"Kafka: {error}") from None
        if not diagnosis.ok:
            raise ServiceError(diagnosis.reason)


def archive_kafka_classes(settings: Settings) -> Path:
    """Make (again) the class-data archive every local Kafka node starts with; returns its path."""
    archive = class_archive(settings)
    archive.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="kafka-classes-") as scratch:
        written = Path(scratch) / archive.name
        node = kafka_nodes(load_settings({
            **os.environ, **private_environment(Path(scratch) / "data"),
            "FLIGHT_PLATFORM_KAFKA_LIBS_DIR": str(settings.kafka_libs_dir),
            "FLIGHT_PLATFORM_EXTERNAL_SERVICES": "",
            "FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "FLIGHT_PLATFORM_KAFKA_JVM_OPTIONS": f"-XX:ArchiveClassesAtExit={written}"}))[0]
        start(node)
        stop(node)  # the JVM writes the archive as it exits
        if not written.is_file():
            raise ServiceError(f"{node.name}'s JVM exited without writing the archive: "
                               f"{node.log_file.read_text()[-2000:]}")
        # Tried before it is used: a JVM mapping a truncated archive (one killed while writing it)
        # crashes instead of loading the jars. -Xshare:on fails rather than run without it.
        tried = subprocess.run([node.executable, "-Xshare:on", f"-XX:SharedArchiveFile={written}",
                                "-Xlog:class+load=info", "-cp", str(settings.kafka_libs_dir / "*"),
                                "kafka.Kafka", "--version"], capture_output=True, text=True, timeout=60)
        if tried.returncode != 0 or "kafka.Kafka source: shared objects file" not in tried.stdout:
            raise ServiceError(f"the class-data archive {node.name}'s JVM wrote does not load "
                               f"(exit {tried.returncode}): {(tried.stderr or tried.stdout)[-2000:]}")
        shutil.move(written, archive)
    return archive


def down(settings: Settings) -> None:
    for name, report in stop_all(services(settings)).items():
        print(f"{name:7} {report}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flight_platform.local.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "archive-kafka-classes"])
    command = parser.parse_args(argv).command
    try:
        settings = load_settings()
    except ValueError as error:  # settings that contradict each other
        print(f"error: {error}", file=sys.stderr)
        return 2
    if command == "up":
        try:
            up(settings)
        except ServiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    elif command == "down":
        down(settings)
    elif command == "archive-kafka-classes":
        try:
            print(f"kafka   class-data archive: {archive_kafka_classes(settings)}")
        except ServiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
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
