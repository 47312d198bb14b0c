"""The service manager CLI, against its own ports and data dir (not the session's services)."""

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster
import psutil
import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from flight_platform.clients import mongo
from flight_platform.clients.kafka import connection, create_consumer, create_producer, partition_count
from flight_platform.clients.mongo import DEAD_LETTERS, DISTANCES, RESPONSES
from flight_platform.clients.security import CredentialError, Role
from flight_platform.local import certificates, services
from flight_platform.local.kafka_node import class_archive
from flight_platform.local.mongo_server import MongoServer
from flight_platform.local.processes import alive
from flight_platform.resources import build_resources
from flight_platform.settings import REPO_ROOT, free_port, load_settings, private_environment

pytestmark = pytest.mark.services  # each test starts private services (broker, Mongo, Spark)


def manager(env: dict, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flight_platform.local.services", command], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def env(tmp_path):
    env = {**os.environ, **private_environment(tmp_path)}
    yield env
    manager(env, "down")


def pids(tmp_path) -> dict[str, int]:
    """The pid of each service the manager started, by name."""
    return {path.stem: int(path.read_text()) for path in (tmp_path / "services").glob("*.pid")}


@pytest.fixture(scope="module")
def services_up(tmp_path_factory) -> Iterator[tuple[dict, Path]]:
    """(environment, data dir) of private services the manager started, for the tests that look at
    them running; test_up_status_down starts and stops its own."""
    data_dir = tmp_path_factory.mktemp("services_up")
    env = {**os.environ, **private_environment(data_dir)}
    assert manager(env, "up").returncode == 0
    yield env, data_dir
    manager(env, "down")


def test_up_status_down(env, tmp_path):
    assert manager(env, "status").returncode == 3

    up = manager(env, "up")
    assert up.returncode == 0, up.stderr
    for name in ("kafka-1", "mongo  ", "spark  "):
        assert f"{name} started" in up.stdout
    started = pids(tmp_path)
    assert set(started) == {"kafka-1", "mongo", "spark"} and all(alive(pid) for pid in started.values())
    # FLIGHT_PLATFORM_KAFKA_JVM_OPTIONS (the suite's, see conftest) reaches the broker's JVM.
    assert "-XX:TieredStopAtLevel=1" in psutil.Process(started["kafka-1"]).cmdline()
    # ...and FLIGHT_PLATFORM_SPARK_JVM_OPTIONS the Spark server's (spark-submit execs its JVM).
    assert "-XX:+UseSerialGC" in psutil.Process(started["spark"]).cmdline()

    status = manager(env, "status")
    assert status.returncode == 0
    assert status.stdout.count(": healthy") == 3

    down = manager(env, "down")
    assert down.returncode == 0
    assert not any(alive(pid) for pid in started.values())
    assert manager(env, "status").returncode == 3


def test_kafka_nodes_start_from_the_class_archive_make_install_made(settings):
    """The node's JVM maps Kafka's classes from the archive instead of loading them from the jars."""
    node = services.kafka_nodes(settings)[0]
    java = node.command()
    assert f"-XX:SharedArchiveFile={class_archive(settings)}" in java
    loaded = subprocess.run([*java[:java.index("kafka.Kafka")], "-Xlog:class+load=info", "kafka.Kafka",
                             "--version"], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert "kafka.Kafka source: shared objects file (top)" in loaded.stdout


def test_batch_work_runs_below_serving(services_up):
    """The Spark server's JVM, where Spark works, and the process of a run using Spark yield the CPU
    to the stream and the web app, every thread of them; the broker and the Mongo-protocol server,
    which serving waits on, do not."""
    env, data_dir = services_up
    started = pids(data_dir)
    assert load_settings(env).batch_niceness == 19

    def priorities(pid: int) -> set[int]:
        return {os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(pid).threads()}

    assert priorities(started["spark"]) == {19}
    assert priorities(started["kafka-1"]) == priorities(started["mongo"]) == {0}
    # Each service is a session: under autogroup scheduling, the session's nice ranks it against the others.
    if Path("/proc/self/autogroup").exists():
        def session_niceness(pid: int) -> int:
            return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])

        assert session_niceness(started["spark"]) == 19
        assert session_niceness(started["kafka-1"]) == session_niceness(started["mongo"]) == 0
    # The resource as a run sets it up.
    probe = ("import os, dagster, psutil\n"
             "from flight_platform.resources import build_resources\n"
             "from flight_platform.settings import load_settings\n"
             "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
             "spark = build_resources(load_settings())['spark']\n"
             "with dagster.build_resources({'spark': spark}) as run:\n"
             "    assert run.spark.spark_session.range(3).count() == 3\n"
             "print(before, sorted({os.getpriority(os.PRIO_PROCESS, t.id) "
             "for t in psutil.Process().threads()}))")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[-1] == "0 [19]"


def test_refuses_to_start_a_second_copy(services_up):
    env, data_dir = services_up
    first = pids(data_dir)
    again = manager(env, "up")
    assert again.stdout.count("already running") == 3
    assert pids(data_dir) == first
    brokers = subprocess.run(["pgrep", "-f", str(data_dir / "services" / "kafka-1")],
                             capture_output=True, text=True).stdout.split()
    assert brokers == [str(first["kafka-1"])]


def test_mongo_data_survives_a_restart(env):
    env["FLIGHT_PLATFORM_EXTERNAL_SERVICES"] = "spark"  # not this test's: no Spark JVM to start
    assert manager(env, "up").returncode == 0
    with mongo.create_client(load_settings(env), Role.ADMIN) as client:
        client.test.kept.insert_one({"_id": 1})
    manager(env, "down")
    assert manager(env, "up").returncode == 0
    with mongo.create_client(load_settings(env), Role.ADMIN) as client:
        assert client.test.kept.find_one({"_id": 1}) == {"_id": 1}


def mongo_server_of(settings) -> MongoServer:
    return next(service for service in services.services(settings) if isinstance(service, MongoServer))


@pytest.fixture(scope="module")
def mongo_env(tmp_path_factory) -> dict[str, str]:
    return {**os.environ, **private_environment(tmp_path_factory.mktemp("mongo_users"))}


@pytest.fixture(scope="module")
def mongo_server(mongo_env) -> Iterator[MongoServer]:
    """A private MongoDB-protocol server alone (no broker, no Spark), with its users, as the local
    stack runs it: what its restart does must not touch the session's."""
    server = mongo_server_of(load_settings(mongo_env))
    services.start(server)
    yield server
    services.stop(server)


def test_mongo_refuses_anonymous_clients_and_wrong_passwords(mongo_server, mongo_env):
    settings = mongo_server.settings
    with MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=5000) as anonymous, \
            pytest.raises(OperationFailure) as refused:
        anonymous[settings.mongo_database][RESPONSES].find_one()
    assert refused.value.code == mongo.UNAUTHORIZED

    secret = uuid.uuid4().hex
    wrong = load_settings({**mongo_env, "FLIGHT_PLATFORM_MONGO_WEB_PASSWORD": secret})
    with mongo.create_client(wrong, Role.WEB) as client, pytest.raises(OperationFailure) as refused:
        client[settings.mongo_database][RESPONSES].find_one()
    assert refused.value.code == mongo.AUTHENTICATION_FAILED
    reported = mongo.ping(wrong, Role.WEB)
    assert reported.startswith("MongoDB refused the login of user 'flight_web' "
                               "(FLIGHT_PLATFORM_MONGO_WEB_USER; password from "
                               "FLIGHT_PLATFORM_MONGO_WEB_PASSWORD)")
    assert secret not in reported


def test_each_mongo_user_may_do_what_its_role_does_only(mongo_server):
    settings = mongo_server.settings
    database = settings.mongo_database
    answer = {"_id": str(uuid.uuid4()), "ModelVersion": "roles"}
    with mongo.create_client(settings, Role.STREAM) as stream:
        stream[database][RESPONSES].insert_one(answer)
        stream[database][DEAD_LETTERS].insert_one({"_id": "requests:0:0"})
    with mongo.create_client(settings, Role.WEB) as web:
        assert web[database][RESPONSES].find_one({"_id": answer["_id"]}) == answer
        for collection in (RESPONSES, DEAD_LETTERS, DISTANCES):
            with pytest.raises(OperationFailure) as refused:
                web[database][collection].insert_one({"_id": "from the web user"})
            assert refused.value.code == mongo.UNAUTHORIZED, collection
        # Its own state, the rate limit's counts, in a database of its own.
        web[mongo.web_database(database)][mongo.RATE_LIMIT_WINDOWS].insert_one({"_id": "a window"})
    with mongo.create_client(settings, Role.BATCH) as batch:
        batch[database][DISTANCES].insert_one({"Origin": "JFK", "Dest": "ATL", "Distance": 760.0})
        assert batch[database][RESPONSES].find_one({"_id": answer["_id"]}) == answer
        with pytest.raises(OperationFailure) as refused:
            batch["another_database"]["anything"].find_one()
        assert refused.value.code == mongo.UNAUTHORIZED


def test_a_stream_run_refused_by_mongo_names_the_user_and_never_the_password(mongo_server, mongo_env,
                                                                              monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("FLIGHT_PLATFORM_MONGO_STREAM_PASSWORD", secret)  # read as the run starts
    resource = build_resources(load_settings({**mongo_env, "FLIGHT_PLATFORM_MONGO_STREAM_PASSWORD": secret}))[
        "stream_mongo"]
    assert secret not in repr(resource)  # the UI shows the variable's name
    with dagster.build_resources({"stream_mongo": resource}) as run, \
            pytest.raises(CredentialError) as refused:
        run.stream_mongo.get_database()
    assert "user 'flight_stream' (FLIGHT_PLATFORM_MONGO_STREAM_USER; password from " \
           "FLIGHT_PLATFORM_MONGO_STREAM_PASSWORD)" in str(refused.value)
    assert secret not in str(refused.value)


def test_mongo_users_are_made_once_and_survive_a_restart_with_owner_only_passwords(mongo_server, mongo_env):
    settings = mongo_server.settings
    made = mongo_server.users_marker.stat().st_mtime_ns
    password_files = sorted(settings.secrets_dir.glob("mongo-*.password"))
    passwords = [path.read_text() for path in password_files]
    assert [path.name for path in password_files] == [f"mongo-{role}.password" for role in sorted(Role)]
    assert stat.S_IMODE(settings.secrets_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in password_files} == {0o600}
    services.stop(mongo_server)

    # The manager's start-up check logs in as the admin: a refused login ends it at once, naming
    # the user, and leaves nothing running.
    wrong = mongo_server_of(load_settings({**mongo_env, "FLIGHT_PLATFORM_MONGO_ADMIN_PASSWORD": "wrong"}))
    with pytest.raises(services.ServiceError, match="refused the login of user 'flight_admin' "
                                                    r"\(FLIGHT_PLATFORM_MONGO_ADMIN_USER"):
        services.start(wrong)
    assert services.running_pid(mongo_server) is None

    assert "started" in services.start(mongo_server)
    assert mongo_server.users_marker.stat().st_mtime_ns == made  # not made again
    assert [path.read_text() for path in password_files] == passwords
    assert all(mongo.ping(settings, role) is None for role in Role)


def test_with_mongo_auth_off_the_server_takes_anonymous_clients(tmp_path):
    settings = load_settings({**os.environ, **private_environment(tmp_path),
                              "FLIGHT_PLATFORM_MONGO_AUTH": "false"})
    server = mongo_server_of(settings)
    services.start(server)
    try:
        with MongoClient(settings.mongo_uri) as anonymous:
            anonymous[settings.mongo_database][RESPONSES].insert_one({"_id": "anonymous"})
        assert not settings.secrets_dir.exists()
    finally:
        services.stop(server)


@dataclass(frozen=True)
class TlsMongoServer(MongoServer):
    """The local server serving TLS, as a MongoDB the platform is pointed at may require (not the
    local stack's default: SecantusDB's handshake runs on its accepting thread, so one idle
    connection holds up every new client)."""

    def command(self) -> list[str]:
        pem = certificates.ensure_server_certificate(self.settings.secrets_dir, "mongo", [self.host])
        return [*super().command(), "--tls-cert-file", str(pem.pem_file), "--tls-key-file",
                str(pem.pem_file)]


def test_tls_to_mongo_is_set_in_the_uri(tmp_path):
    environment = private_environment(tmp_path)
    ca_file, _ = certificates.ensure_ca(tmp_path / "secrets")  # the server's certificate's CA
    environment["FLIGHT_PLATFORM_MONGO_URI"] += f"&tls=true&tlsCAFile={ca_file}"
    settings = load_settings({**os.environ, **environment})
    local = mongo_server_of(settings)
    server = TlsMongoServer(local.name, local.host, local.port, local.executable, settings)
    services.start(server)  # its users are made over plaintext, before it serves TLS
    try:
        with mongo.create_client(settings, Role.STREAM) as client:
            client[settings.mongo_database][RESPONSES].insert_one({"_id": "over TLS"})
        plaintext = settings.mongo_uri.split("&tls=")[0]
        with MongoClient(plaintext, serverSelectionTimeoutMS=500) as client, \
                pytest.raises(ServerSelectionTimeoutError):
            client.admin.command("ping")
    finally:
        services.stop(server)


def test_a_port_taken_by_someone_else_is_an_error_and_nothing_is_left_running(env):
    # The Spark server's: the broker and the Mongo-protocol server are launched before it.
    host, port = services.spark_server(load_settings(env)).endpoint.split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        up = manager(env, "up")
    assert up.returncode == 1
    assert f"spark: {host}:{port} is already taken by a process this manager did not start" in up.stderr
    status = manager(env, "status")
    assert status.returncode == 3 and status.stdout.count(" stopped") == 3, status.stdout
    kafka_host, kafka_port = env["FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert not services.port_in_use(kafka_host, int(kafka_port))


# A JVM whose shutdown hook never returns, as a Kafka node waiting for its controlled shutdown to be
# approved: SIGTERM does not end it.
STUCK_IN_SHUTDOWN = """
public class StuckInShutdown {
    public static void main(String[] args) throws Exception {
        var server = new java.net.ServerSocket(Integer.parseInt(args[0]), 50,
                                               java.net.InetAddress.getLoopbackAddress());
        Runtime.getRuntime().addShutdownHook(new Thread(StuckInShutdown::awaitApproval));
        Thread.sleep(600_000);
    }

    static void awaitApproval() {
        try { Thread.sleep(600_000); } catch (InterruptedException e) { }
    }
}
"""


@dataclass(frozen=True)
class StuckJvm(services.Service):
    source: Path = Path()

    @property
    def is_jvm(self) -> bool:
        return True

    def command(self) -> list[str]:
        return [self.executable, str(self.source), str(self.port)]

    def is_healthy(self) -> bool:
        return services.port_in_use(self.host, self.port)


def test_a_service_deaf_to_sigterm_is_killed_and_its_port_free_when_stop_returns(tmp_path,
                                                                                  monkeypatch):
    """And a JVM's report points at its threads' stacks in its log, to show where it waited."""
    monkeypatch.setattr(services, "SHUTDOWN_TIMEOUT_S", 1.0)
    settings = load_settings({**os.environ, **private_environment(tmp_path)})
    source = tmp_path / "StuckInShutdown.java"
    source.write_text(STUCK_IN_SHUTDOWN)
    server = StuckJvm("stuck", "127.0.0.1", free_port(), "java", settings, source)
    services.start(server)

    report = services.stop(server)
    assert "without exiting on SIGTERM" in report, report
    assert f"its threads' stacks at the time are in {server.log_file}" in report
    assert "StuckInShutdown.awaitApproval" in server.log_file.read_text()
    assert not services.port_in_use(server.host, server.port)
    assert "started" in services.start(server)  # at once, as a rolling restart does
    services.stop(server)


def test_external_services_are_left_alone(env, tmp_path):
    """Off loopback, or on loopback and named in FLIGHT_PLATFORM_EXTERNAL_SERVICES (a tunnel to a
    remote server, a server another stack runs)."""
    env["FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS"] = "kafka.example.internal:9092"
    env["FLIGHT_PLATFORM_MONGO_URI"] = "mongodb://mongo-0.example.internal:27017/?replicaSet=rs0"
    env["FLIGHT_PLATFORM_EXTERNAL_SERVICES"] = "spark"
    spark_endpoint = env["FLIGHT_PLATFORM_SPARK_REMOTE"].removeprefix("sc://")
    up = manager(env, "up")
    assert up.returncode == 0
    assert up.stdout.count("external") == 3
    assert f"spark   external at {spark_endpoint}: not managed here" in up.stdout
    assert not (tmp_path / "services").exists()

    env["FLIGHT_PLATFORM_EXTERNAL_SERVICES"] = "spark,postgres"
    refused = manager(env, "up")
    assert refused.returncode == 2
    assert "FLIGHT_PLATFORM_EXTERNAL_SERVICES names postgres: use a comma-separated list of kafka, " \
           "mongo, spark" in refused.stderr


@pytest.mark.parametrize("stop", ["down", "kill -9"])
def test_kafka_keeps_acknowledged_messages_topics_and_group_offsets_across_a_restart(env, tmp_path, stop):
    env["FLIGHT_PLATFORM_EXTERNAL_SERVICES"] = "spark"  # not this test's: no Spark JVM to start
    settings = load_settings(env)
    assert manager(env, "up").returncode == 0
    producer = create_producer(connection(settings, Role.BATCH))
    sent = [f"request-{i}".encode() for i in range(300)]
    for future in [producer.send(settings.request_topic, value) for value in sent]:
        future.get(timeout=10)  # acknowledged by the broker
    producer.close()
    first = read_group(settings, at_least=100)  # read and committed: not to be read again
    if stop == "down":
        manager(env, "down")
    else:
        os.kill(pids(tmp_path)["kafka-1"], signal.SIGKILL)
    assert manager(env, "up").returncode == 0

    assert partition_count(connection(settings, Role.STREAM), settings.request_topic) == (
        settings.request_topic_partitions)
    rest = read_group(settings, at_least=len(sent) - len(first))
    assert sorted(first + rest) == sorted(sent)  # every acknowledged message, each read once


def read_group(settings, at_least: int) -> list[bytes]:
    """Read at least `at_least` messages in one consumer group, from its committed offsets on,
    and commit them; what it read."""
    consumer = create_consumer(connection(settings, Role.STREAM), settings.consumer_group,
                               settings.request_topic, settings.consumer_session_timeout_ms)
    read: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(read) < at_least and time.monotonic() < deadline:
            read += [r.value for batch in consumer.poll(timeout_ms=500).values() for r in batch]
        consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return read
