"""The platform exporter: for Prometheus, what no worker can report about itself, read where it is kept.

- Kafka: the consumer group's lag per request partition as the broker sees it (end offset minus
  committed offset). Unlike each worker's own lag, it goes on growing when no worker runs, so the
  lag alert fires when the stream is down.
- The Dagster instance and the model store: each asset's last materialization (when, how long its
  step took, rows), the offline accuracy of the champion and the challengers, each version's live
  accuracy on the month last judged (prediction_outcomes' metadata), each feature's drift PSI
  (its check's metadata) and whether the drift and model freshness checks last passed.

Everything is read when Prometheus scrapes (a custom collector; the batch side at most every
BATCH_REFRESH_S), so nothing runs between scrapes. A process of its
own rather than events pushed from Dagster's runs: `dagster-prometheus` only pushes to a Pushgateway,
and reading the instance needs nothing to run in Dagster and reports what the UI shows. A source that
cannot be read says so (`flight_exporter_source_up`) instead of failing the scrape.

    python -m flight_platform.monitoring.exporter     (the local stack starts it)
"""

import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

from dagster import AssetCheckEvaluation, AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
)
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flight_platform.batch import freshness
from flight_platform.clients.kafka import CLIENT_TIMEOUT_MS, connection
from flight_platform.clients.mongo import DISTANCES
from flight_platform.clients.security import Role
from flight_platform.core.model_store import FLIGHT_DELAY_MODEL, ModelStore
from flight_platform.core.monitoring import CHALLENGER, CHAMPION
from flight_platform.settings import Settings, load_settings
from flight_platform.warehouse import (
    DRIFT_CHECK,
    FLIGHT_DELAY_FEATURES,
    ON_TIME_PERFORMANCE,
    PREDICTION_OUTCOMES,
)

ASSETS = [ON_TIME_PERFORMANCE, DISTANCES, FLIGHT_DELAY_FEATURES, FLIGHT_DELAY_MODEL, PREDICTION_OUTCOMES]
DRIFT = AssetCheckKey(AssetKey(PREDICTION_OUTCOMES), DRIFT_CHECK)
CHECKS = [DRIFT, freshness.CHECK_KEY]
RETIRED = "retired"  # a version neither serving nor in the champion's shadow any more
BATCH_REFRESH_S = 10.0
# Stopping waits on library threads (the Kafka client's, Dagster's storage's): one that hangs gets
# every thread's stack logged and the process ends after this, well before its SIGKILL.
SHUTDOWN_TIMEOUT_S = 10
log = logging.getLogger(__name__)


class ConsumerGroupLag:
    """The stream's consumer group, read as its own user (allowed to describe the group and the
    topic) by a consumer that never joins the group."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._consumer: KafkaConsumer | None = None

    def read(self) -> list[Metric]:
        settings = self.settings
        lag = GaugeMetricFamily("flight_consumer_group_lag", "Requests not yet committed by the group: "
                                "the partition's end offset minus the group's committed offset.",
                                labels=["group", "topic", "partition"])
        try:
            for partition, behind in self.lags().items():
                lag.add_metric([settings.consumer_group, settings.request_topic, str(partition)], behind)
        except Exception:
            self.close()  # a fresh consumer next time, whatever state this one is in
            raise
        return [lag]

    def lags(self) -> dict[int, int]:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **connection(self.settings, Role.STREAM), group_id=self.settings.consumer_group,
                enable_auto_commit=False, request_timeout_ms=CLIENT_TIMEOUT_MS + 1000,
                bootstrap_timeout_ms=CLIENT_TIMEOUT_MS)
        consumer, topic = self._consumer, self.settings.request_topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = consumer.end_offsets(partitions, timeout_ms=CLIENT_TIMEOUT_MS)
        # A partition the group never committed is read from its beginning (auto_offset_reset).
        beginning = consumer.beginning_offsets(partitions, timeout_ms=CLIENT_TIMEOUT_MS)
        lags = {}
        for partition in partitions:
            committed = consumer.committed(partition, timeout_ms=CLIENT_TIMEOUT_MS)
            lags[partition.partition] = end[partition] - (
                committed if committed is not None else beginning[partition])
        return lags

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


class BatchState:
    """The assets' last materializations and the models' accuracy, from the instance and the store.

    Read at most every BATCH_REFRESH_S: the batch side changes when a run ends, minutes apart, and
    a scrape every second (the tests') stays within its timeout however long the event log grows."""

    def __init__(self, instance: DagsterInstance, store: ModelStore):
        self.instance = instance
        self.store = store
        self._read: tuple[float, list[Metric]] | None = None  # (when, what)

    def read(self) -> list[Metric]:
        if self._read is None or time.monotonic() - self._read[0] > BATCH_REFRESH_S:
            # Each check's latest evaluation, read once: its result and the drift check's PSI.
            evaluations = {key: self._latest_evaluation(key) for key in CHECKS}
            self._read = (time.monotonic(), [*self._assets(), self._checks(evaluations),
                                             *self._models(evaluations[DRIFT])])
        return self._read[1]

    def _latest_evaluation(self, key: AssetCheckKey) -> AssetCheckEvaluation | None:
        # The latest record that has a result: a check a run has planned but not evaluated (in
        # progress, or its run died) leaves the result before it standing.
        records = self.instance.event_log_storage.get_asset_check_execution_history(
            key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
        return records[0].evaluation if records else None

    def _assets(self) -> list[Metric]:
        when = GaugeMetricFamily("flight_asset_last_materialization_timestamp_seconds",
                                 "When the asset was last materialized (any partition).", labels=["asset"])
        took = GaugeMetricFamily("flight_asset_materialization_duration_seconds", "How long the step "
                                 "that last materialized the asset took.", labels=["asset"])
        rows = GaugeMetricFamily("flight_asset_rows", "Rows its last materialization reported "
                                 "(dagster/row_count).", labels=["asset"])
        for asset in ASSETS:
            event = self.instance.get_latest_materialization_event(AssetKey(asset))
            if event is None:
                continue
            when.add_metric([asset], event.timestamp)
            # A materialization reported without a run (the UI's "Report materialization", a
            # sensor's runless event) has no step, and so no duration.
            step = event.step_key and self.instance.get_run_step_stats(event.run_id,
                                                                       step_keys=[event.step_key])
            if step and step[0].start_time and step[0].end_time:
                took.add_metric([asset], step[0].end_time - step[0].start_time)
            row_count = event.asset_materialization.metadata.get("dagster/row_count")
            if row_count is not None:
                rows.add_metric([asset], row_count.value)
        return [when, took, rows]

    def _checks(self, evaluations: dict[AssetCheckKey, AssetCheckEvaluation | None]) -> Metric:
        passed = GaugeMetricFamily("flight_asset_check_passed", "1 when the check's latest "
                                   "evaluation passed, 0 when it failed.", labels=["asset", "check"])
        for key, evaluation in evaluations.items():
            if evaluation:
                passed.add_metric([key.asset_key.path[-1], key.name], int(evaluation.passed))
        return passed

    def _models(self, drift_evaluation: AssetCheckEvaluation | None) -> list[Metric]:
        # One read of the store's pointers for the whole scrape: every series names the same roles.
        champion, challengers = self.store.current_version(), self.store.challengers()
        roles = {**dict.fromkeys(challengers, CHALLENGER), **({champion: CHAMPION} if champion else {})}
        offline = GaugeMetricFamily("flight_model_offline_accuracy", "Accuracy on the held-out rows "
                                    "of its training, of the champion and each challenger.",
                                    labels=["version", "role"])
        for version, role in roles.items():
            offline.add_metric([version, role], self.store.read_info(version)["accuracy"])
        live = GaugeMetricFamily("flight_model_live_accuracy", "Accuracy on real flights, per version, "
                                 "on the month prediction_outcomes last judged.", labels=["version", "role"])
        judged = GaugeMetricFamily("flight_model_live_matched_answers", "Answers of that month matched "
                                   "to their flight, per version.", labels=["version", "role"])
        psi = GaugeMetricFamily("flight_feature_drift_psi", "Population stability index of each "
                                "served feature against training (the drift check's last result).",
                                labels=["feature"])
        outcomes = self.instance.get_latest_materialization_event(AssetKey(PREDICTION_OUTCOMES))
        if outcomes is not None:
            by_version = outcomes.asset_materialization.metadata.get("accuracy_by_version")
            for record in by_version.value.records if by_version else []:
                row = record.data
                if row["Accuracy"] is not None:
                    labels = [row["ModelVersion"], roles.get(row["ModelVersion"], RETIRED)]
                    live.add_metric(labels, row["Accuracy"])
                    judged.add_metric(labels, row["Matched"])
        drift = drift_evaluation.metadata.get("psi_by_feature") if drift_evaluation else None
        for record in drift.value.records if drift else []:
            psi.add_metric([record.data["Feature"]], record.data["PSI"])
        return [offline, live, judged, psi]


class PlatformCollector(Collector):
    """Reads every source at each scrape; one that fails is reported down, not the whole scrape."""

    def __init__(self, settings: Settings, instance: DagsterInstance):
        self.sources = {"kafka": ConsumerGroupLag(settings),
                        "dagster": BatchState(instance, ModelStore(settings.model_store_dir))}
        self._lock = threading.Lock()  # scrapes may overlap; the Kafka consumer serves one at a time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flight_exporter_source_up", "1 when this scrape read the source.",
                               labels=["source"])
        with self._lock:
            for name, source in self.sources.items():
                try:
                    yield from source.read()
                    up.add_metric([name], 1)
                except Exception as error:  # noqa: BLE001 - e.g. Kafka down, a storage error
                    log.warning(f"{name} not read: {type(error).__name__}: {error}")
                    up.add_metric([name], 0)
        yield up


def registry(settings: Settings, instance: DagsterInstance) -> CollectorRegistry:
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(PlatformCollector(settings, instance))
    return collectors


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked in every thread (those started below inherit it) and waited for: no handler runs, so
    # a second signal cannot interrupt the first one's handling.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        server, thread = start_http_server(settings.exporter_port, addr=settings.metrics_host,
                                           registry=registry(settings, instance))
        log.info(f"Serving the platform's metrics at http://{settings.metrics_host}:"
                 f"{settings.exporter_port}/metrics")
        log.info(f"Stopping on {signal.Signals(signal.sigwait(stop_signals)).name}")
        faulthandler.dump_traceback_later(SHUTDOWN_TIMEOUT_S, exit=True)
        server.shutdown()
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
