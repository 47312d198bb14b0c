"""The service manager CLI, against its own ports and data dir (not the session's services)."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

from flight_platform.clients.kafka import create_consumer, create_producer, partition_count
from flight_platform.local import services
from flight_platform.local.processes import alive
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
    return {name: int((tmp_path / "services" / f"{name}.pid").read_text())
            for name in ("kafka-1", "mongo", "spark")}


def test_up_status_down(env, tmp_path):
    assert manager(env, "status").returncode == 3

    up = manager(env, "up")
    assert up.returncode == 0, up.stderr
    for name in ("kafka-1", "mongo  ", "spark  "):
        assert f"{name} started" in up.stdout
    started = pids(tmp_path)
    assert all(alive(pid) for pid in started.values())

    status = manager(env, "status")
    assert status.returncode == 0
    assert status.stdout.count(": healthy") == 3

    down = manager(env, "down")
    assert down.returncode == 0
    assert not any(alive(pid) for pid in started.values())
    assert manager(env, "status").returncode == 3


def test_batch_work_runs_below_serving(env, tmp_path):
    """The Spark server's JVM, where Spark works, and the process of a run using Spark yield the CPU
    to the stream and the web app, every thread of them; the broker and the Mongo-protocol server,
    which serving waits on, do not."""
    assert manager(env, "up").returncode == 0
    started = pids(tmp_path)
    assert load_settings(env).batch_niceness == 19

    def priorities(pid: int) -> set[int]:
        return {os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(pid).threads()}

    assert priorities(started["spark"]) == {19}
    assert priorities(started["kafka-1"]) == priorities(started["mongo"]) == {0}
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


def test_refuses_to_start_a_second_copy(env, tmp_path):
    assert manager(env, "up").returncode == 0
    first = pids(tmp_path)
    again = manager(env, "up")
    assert again.stdout.count("already running") == 3
    assert pids(tmp_path) == first
    brokers = subprocess.run(["pgrep", "-f", str(tmp_path / "services" / "kafka-1")],
                             capture_output=True, text=True).stdout.split()
    assert brokers == [str(first["kafka-1"])]


def test_mongo_data_survives_a_restart(env):
    from pymongo import MongoClient

    assert manager(env, "up").returncode == 0
    with MongoClient(env["FLIGHT_PLATFORM_MONGO_URI"]) as client:
        client.test.kept.insert_one({"_id": 1})
    manager(env, "down")
    assert manager(env, "up").returncode == 0
    with MongoClient(env["FLIGHT_PLATFORM_MONGO_URI"]) as client:
        assert client.test.kept.find_one({"_id": 1}) == {"_id": 1}


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


@dataclass(frozen=True)
class StubbornServer(services.Service):
    """Listens on its port and ignores SIGTERM, as a Kafka node stuck in its controlled shutdown."""

    def command(self) -> list[str]:
        return [self.executable, "-c", "import signal, socket, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                f"server = socket.create_server(({self.host!r}, {self.port}))\n"
                "time.sleep(600)"]

    def is_healthy(self) -> bool:
        return services.port_in_use(self.host, self.port)


def test_a_service_deaf_to_sigterm_is_killed_and_its_port_free_when_stop_returns(tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(services, "SHUTDOWN_TIMEOUT_S", 1.0)
    settings = load_settings({**os.environ, **private_environment(tmp_path)})
    server = StubbornServer("stubborn", "127.0.0.1", free_port(), sys.executable, settings)
    services.start(server)

    assert "without exiting on SIGTERM" in services.stop(server)
    assert not services.port_in_use(server.host, server.port)
    assert "started" in services.start(server)  # at once, as a rolling restart does
    services.stop(server)


def test_external_services_are_left_alone(env, tmp_path):
    env["FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS"] = "kafka.example.internal:9092"
    env["FLIGHT_PLATFORM_MONGO_URI"] = "mongodb://mongo-0.example.internal:27017/?replicaSet=rs0"
    env["FLIGHT_PLATFORM_SPARK_REMOTE"] = "sc://spark-connect.example.internal:15002"
    up = manager(env, "up")
    assert up.returncode == 0
    assert up.stdout.count("external") == 3
    assert not (tmp_path / "services").exists()


@pytest.mark.parametrize("stop", ["down", "kill -9"])
def test_kafka_keeps_acknowledged_messages_topics_and_group_offsets_across_a_restart(env, tmp_path, stop):
    settings = load_settings(env)
    assert manager(env, "up").returncode == 0
    producer = create_producer(settings.kafka_bootstrap_servers)
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

    assert partition_count(settings.kafka_bootstrap_servers, settings.request_topic) == (
        settings.request_topic_partitions)
    rest = read_group(settings, at_least=len(sent) - len(first))
    assert sorted(first + rest) == sorted(sent)  # every acknowledged message, each read once


def read_group(settings, at_least: int) -> list[bytes]:
    """Read at least `at_least` messages in one consumer group, from its committed offsets on,
    and commit them; what it read."""
    consumer = create_consumer(settings.kafka_bootstrap_servers, "durability", settings.request_topic,
                               settings.consumer_session_timeout_ms)
    read: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(read) < at_least and time.monotonic() < deadline:
            read += [r.value for batch in consumer.poll(timeout_ms=500).values() for r in batch]
        consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return read
