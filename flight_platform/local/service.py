"""What every local service is: a process this manager starts on loopback, with its pid and log
files under the data dir, a real health check, and its own set-up before it starts and after every
service answers. Each service lives in a module of its own beside this one (kafka_node, mongo_server,
spark_server); `flight_platform.local.services` manages them together."""

import ipaddress
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from flight_platform.settings import Settings

STARTUP_TIMEOUT_S = 60.0  # a Kafka node answers in about 4 s on an idle box, 2 JVMs on 2 cores take longer


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
    def kind(self) -> str:
        """What it is, as FLIGHT_PLATFORM_EXTERNAL_SERVICES names it: the nodes of a Kafka cluster
        ("kafka-1", "kafka-2", ...) are all "kafka"."""
        return self.name.split("-")[0]

    @property
    def is_external(self) -> bool:
        """Used at its endpoint and never started or stopped here: off loopback, or named external."""
        return not _is_loopback(self.host) or self.kind in self.settings.external_services

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
    def is_jvm(self) -> bool:
        """Whether it is a JVM, which prints every thread's stack to its log on SIGQUIT and runs on."""
        return False

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

