"""The streaming job: one long-lived run that answers prediction requests with the champion model
and scores them with the challengers too, recording their predictions beside the answer.

Each run is pinned to a champion version and a list of challengers (run config, mirrored in run
tags). A change of either is rolled out by `flight_platform.streaming.supervisor`, which stops this
run and starts a new one, so every answer names the versions that really produced it.
"""

import faulthandler
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import (
    AssetObservation,
    AssetSpec,
    Config,
    DagsterExecutionInterruptedError,
    Failure,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)
from kafka.errors import KafkaError
from pydantic import Field

from flight_platform.clients.kafka_diagnosis import diagnose
from flight_platform.clients.mongo import RESPONSES
from flight_platform.clients.security import CredentialError
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer
from flight_platform.resources import KafkaResource, MetricsResource, ModelStoreResource, MongoResource
from flight_platform.streaming import metrics as stream_metrics
from flight_platform.streaming.worker import PredictionStreamWorker, Progress

MODEL_VERSION_TAG = "flight_platform/model_version"
CHALLENGERS_TAG = "flight_platform/challengers"  # space-separated versions, as the store lists them
SLOT_TAG = "flight_platform/slot"  # which of the N workers this run is (set by the supervisor)
# When the run's consumer first joined the group: from then on it takes its share of the
# partitions, and the run it replaces may stop (see the supervisor's roll-out).
JOINED_TAG = "flight_platform/joined_group_at"
WORKER_TAG = "flight_platform/worker"  # host:pid of the process serving, for operators and drills
METRICS_TAG = "flight_platform/metrics"  # host:port of the worker's Prometheus target
# The request topic as an asset of its own, so that the Dagster UI shows the stream's health: each
# worker observes it once it joins the group and after every progress window with records (lag,
# throughput, latency, the versions serving), which the UI plots over time.
PREDICTION_REQUESTS = AssetSpec(
    "prediction_requests", group_name="streaming", kinds={"kafka"},
    description="The Kafka topic of prediction requests (FLIGHT_PLATFORM_REQUEST_TOPIC): the web app "
    "writes it, the stream workers read it in one consumer group. Its observations are the workers' "
    "reports: partitions held when one joins the group, then per progress window records, records "
    "per second, request-to-answer p50/p95, lag and the model versions serving.")


class PredictionStreamConfig(Config):
    model_version: str = Field(
        default="", description="Model version to serve; empty means the store's `current`.")
    challenger_versions: list[str] | None = Field(
        default=None, description="Versions to score in the champion's shadow; unset means the "
        "store's challengers.")
    progress_interval_seconds: float = Field(
        default=15.0, description="How often throughput, latency and lag are logged.")


@contextmanager
def stop_on_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT/SIGTERM into a flag the worker checks between batches.

    Terminating a run from the Dagster UI interrupts the run process with SIGINT, which Dagster
    would raise inside whatever the op is doing; the batch in hand could then be scored but not
    committed. With the flag, the worker finishes and commits it, then closes its consumer.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
        yield lambda: False
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def load_challengers(store: ModelStore, versions: list[str], log) -> list[tuple[str, PipelineScorer]]:
    """The challengers' scorers. One that cannot be loaded is left out with an error in the log:
    a broken challenger must never stop the champion from serving."""
    loaded = []
    for challenger in versions:
        try:
            loaded.append((challenger, PipelineScorer.load(store.pipeline_dir(challenger))))
        except Exception as error:  # noqa: BLE001 - e.g. deleted by hand, or an unsupported stage
            log.error(f"Challenger {challenger} not loaded ({type(error).__name__}: {error}); "
                      f"serving without it.")
    return loaded


def observe(context: OpExecutionContext, progress: Progress, serving: dict[str, str]) -> None:
    """A progress window as an observation of the request topic (numbers, so the UI plots them)."""
    figures = {"records": progress.records, "records_per_second": round(progress.per_second, 1),
               "lag": progress.lag, "request_to_answer_p50_ms": progress.p50_ms,
               "request_to_answer_p95_ms": progress.p95_ms,
               "dead_lettered_total": progress.totals["dead_lettered"]}
    context.log_event(AssetObservation(PREDICTION_REQUESTS.key, metadata={
        **serving, **{name: value for name, value in figures.items() if value is not None}}))


@op(description="Consume prediction requests from Kafka, score them, store answers in MongoDB; "
    "runs until the run is terminated.")
def serve_prediction_requests(context: OpExecutionContext, config: PredictionStreamConfig,
                              kafka: KafkaResource, stream_mongo: MongoResource,
                              model_store: ModelStoreResource, metrics: MetricsResource) -> None:
    store = model_store.store()
    version = config.model_version or store.current_version()
    if version is None:
        raise Failure("No model has been promoted yet: materialize flight_delay_model first.")
    scorer = PipelineScorer.load(store.pipeline_dir(version))
    challenger_versions = (store.challengers() if config.challenger_versions is None
                           else config.challenger_versions)
    challengers = load_challengers(store, challenger_versions, context.log)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # `kill -USR1 <pid>` (the pid of the run's WORKER_TAG) writes every thread's stack to the run's
    # stderr: what a worker that looks stuck is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The tags tell the supervising sensor what this run serves, however it was launched.
    context.instance.add_run_tags(context.run_id, {
        MODEL_VERSION_TAG: version, CHALLENGERS_TAG: " ".join(challenger_versions),
        WORKER_TAG: worker})
    try:
        partitions = kafka.request_topic_partition_count()
    except KafkaError as error:  # kafka-python says only "Unable to bootstrap": why?
        raise Failure(diagnose(kafka.connection(), kafka.who()).reason) from error
    if partitions == 0:
        raise Failure(f"The request topic {kafka.request_topic} does not exist, or the stream's user "
                      f"{kafka.user!r} may not describe it: the Kafka admin step creates it and grants "
                      f"the rights (`python -m flight_platform.local.services up` on the local stack).")
    if partitions < kafka.stream_workers:
        context.log.error(f"{kafka.request_topic} has {partitions} partitions for "
                          f"{kafka.stream_workers} workers: {kafka.stream_workers - partitions} of them "
                          f"will idle. Add partitions to the topic (see README, 'Scaling out').")

    serving = {"model_version": version, "challengers": " ".join(challenger_versions) or "none",
               "slot": context.run.tags.get(SLOT_TAG, ""),
               "worker": worker}

    def joined(assigned: list) -> None:
        context.log.info(f"Group {kafka.consumer_group} assigned partitions "
                         f"{[p.partition for p in assigned] or 'none (more workers than partitions)'}")
        context.log_event(AssetObservation(PREDICTION_REQUESTS.key, metadata={
            **serving, "partitions_held": len(assigned)}))
        if JOINED_TAG not in context.instance.get_run_by_id(context.run_id).tags:
            context.instance.add_run_tags(context.run_id, {JOINED_TAG: f"{time.time():.3f}"})

    try:
        database = stream_mongo.get_database()  # as the stream's user: it adds answers and dead letters
    except CredentialError as refused:
        raise Failure(str(refused)) from None
    worker_metrics = stream_metrics.StreamMetrics()
    worker = PredictionStreamWorker(kafka.request_consumer(), scorer, version, database,
                                    context.log, config.progress_interval_seconds,
                                    max_message_bytes=kafka.max_message_bytes,
                                    challengers=challengers, explain=model_store.explain_answers,
                                    on_group_joined=joined, metrics=worker_metrics,
                                    on_progress=lambda progress: observe(context, progress, serving),
                                    fresh_end_offsets=kafka.end_offsets)
    shadowed = f" with challengers {', '.join(v for v, _ in challengers)}" if challengers else ""
    context.log.info(f"Serving model {version}{shadowed} from {kafka.request_topic} "
                     f"(group {kafka.consumer_group}) into {database.name}.{RESPONSES}")
    with (stream_metrics.served(worker_metrics, metrics.host, Path(metrics.targets_dir),
                                {"slot": serving["slot"]}) as address,
          stop_on_interrupt() as interrupted):
        context.instance.add_run_tags(context.run_id, {METRICS_TAG: address})
        context.log.info(f"Metrics for Prometheus at http://{address}/metrics")
        totals = worker.run(stop_requested=interrupted)
    context.log.info(f"Stopped cleanly after the last batch was stored and committed: {totals}")
    # Let Dagster record the run as canceled (terminated from the UI) rather than succeeded.
    raise DagsterExecutionInterruptedError()


@job(executor_def=in_process_executor, tags={"flight_platform/role": "prediction-stream"},
     description="The long-lived streaming run, supervised by prediction_stream_supervisor.")
def flight_delay_prediction_stream():
    serve_prediction_requests()
