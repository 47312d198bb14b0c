"""The local Prometheus, from Debian's package (`scripts/install_debian_package`): it scrapes the web
app, each stream worker and the platform exporter, and evaluates the platform's rules
(flight_platform.monitoring.prometheus), with its configuration and time series under the data dir."""

import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flight_platform.local.service import Service
from flight_platform.monitoring import prometheus
from flight_platform.settings import Settings

RETENTION = "15d"  # Prometheus' own default, said here because the data dir holds it


def executable() -> str | None:
    """Prometheus' binary, or None when it is not installed."""
    return shutil.which("prometheus")


def prometheus_server(settings: Settings) -> "PrometheusServer":
    return PrometheusServer("prometheus", "127.0.0.1", settings.prometheus_port,
                            executable() or "prometheus", settings)


@dataclass(frozen=True)
class PrometheusServer(Service):
    @property
    def directory(self) -> Path:
        return self.settings.data_dir / "prometheus"

    @property
    def identity(self) -> str:
        return f"--web.listen-address={self.endpoint}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def initialize(self) -> None:
        """The configuration and rules, written anew from settings at each start."""
        prometheus.write(self.settings, self.directory)

    def command(self) -> list[str]:
        return [self.executable, f"--config.file={self.directory / prometheus.CONFIG_FILE}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--query.lookback-delta={prometheus.lookback_delta(self.settings)}", self.identity]

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False
