"""Reading a target's metrics as Prometheus does: scraped over HTTP, checked by Prometheus' own
parser and linter (`promtool check metrics`), then indexed by series for the tests to compare; and
watching a Prometheus' alerts while a drill runs."""

import json
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# What a stream worker logs once its target is up (flight_platform.streaming.job).
STREAM_TARGET_LOG = re.compile(r"Metrics for Prometheus at (http://\S+/metrics)")


class Scrape:
    def __init__(self, text: str):
        self.text = text
        self.values = {(sample.name, frozenset(sample.labels.items())): sample.value
                       for family in text_string_to_metric_families(text) for sample in family.samples}

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` with exactly `labels`; None when the target does not have it."""
        return self.values.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels` (0 when there are none)."""
        wanted = set(labels.items())
        return sum(value for (sample, sample_labels), value in self.values.items()
                   if sample == name and wanted <= sample_labels)


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    """Scrape `url`; AssertionError if promtool finds the exposition malformed or off convention."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        text = answer.read().decode()
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, f"promtool check metrics on {url}: {checked.stdout}{checked.stderr}"
    return Scrape(text)


def stream_target(log: str) -> str | None:
    """The metrics URL a stream run logged, once it has."""
    found = STREAM_TARGET_LOG.search(log)
    return found and found.group(1)


def announced_targets(targets_dir: Path) -> list[str]:
    """Every address announced in the file-based discovery directory."""
    return [address for target in sorted(targets_dir.glob("*.json"))
            for group in json.loads(target.read_text()) for address in group["targets"]]


class AlertWatch:
    """Polls a Prometheus' /api/v1/alerts in the background, noting each period an alert fires
    (seconds from the watch's start; a period still open ends at None)."""

    def __init__(self, prometheus_url: str, interval: float = 0.5):
        self.url = f"{prometheus_url}/api/v1/alerts"
        self.interval = interval
        self.started = time.monotonic()
        self.periods: dict[str, list[list[float | None]]] = {}
        self.now_firing: set[str] = set()
        self.now_active: set[str] = set()
        self.polled = False  # once Prometheus has answered
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="alert-watch", daemon=True)

    def __enter__(self) -> "AlertWatch":
        self._thread.start()
        return self

    def __exit__(self, *_exception) -> None:
        self._stopped.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    alerts = json.load(answer)["data"]["alerts"]
            except OSError:
                continue
            seen = round(time.monotonic() - self.started, 1)
            firing = {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}
            self.now_active = {alert["labels"]["alertname"] for alert in alerts}  # pending too
            for name in firing - self.now_firing:
                self.periods.setdefault(name, []).append([seen, None])
            for name in self.now_firing - firing:
                self.periods[name][-1][1] = seen
            self.now_firing = firing
            self.polled = True
