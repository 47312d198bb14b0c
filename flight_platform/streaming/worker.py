"""The streaming worker: Kafka prediction requests in, MongoDB prediction documents out.

Delivery is at-least-once into idempotent sinks, which answers each request exactly once in effect:
1. poll a micro-batch from the consumer group;
2. parse it; off-contract messages become dead letters (reason + raw bytes, only a prefix of an
   oversized one), keyed by their topic/partition/offset. Whatever fails on one record (decoding,
   validation, scoring) makes that record a dead letter; nothing a message holds stops the stream;
3. score the valid requests in one vectorized call per model: the champion, whose answer is
   served, and each challenger, whose prediction is only recorded beside it (`Shadow`); the same
   walk down the trees explains each prediction (`PipelineScorer.explain`);
4. insert answers keyed by request UUID and dead letters by topic:partition:offset (both `_id`);
   a duplicate key means a redelivered message that was already answered: the first answer stands;
5. only then commit the batch's offsets (those of stored batches go together, every
   COMMIT_INTERVAL_S, and always before the worker stops).
A crash anywhere before 5 redelivers the batch; step 4 makes the replay harmless. When MongoDB is
unreachable, step 4 is retried with backoff inside the run and nothing is committed meanwhile; when
the broker is, polling and committing are retried: an outage pauses the stream, it does not end it.

No Dagster here: `flight_platform.streaming.job` runs this inside a long-lived Dagster run.
"""

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.base import MemberState
from kafka.errors import AuthorizationError, CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata
from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure

from flight_platform.clients.kafka_diagnosis import describe_denial
from flight_platform.clients.mongo import DEAD_LETTERS, DUPLICATE_KEY, RESPONSES
from flight_platform.core.contract import MAX_MESSAGE_BYTES, InvalidRequest, PredictionRequest, Scored
from flight_platform.core.monitoring import CHALLENGER, CHAMPION
from flight_platform.core.scoring import PipelineScorer
from flight_platform.streaming.metrics import INVALID_REQUEST, SCORING_FAILED, StreamMetrics

POLL_TIMEOUT_MS = 100  # also how quickly a stop request is noticed
MAX_BATCHES_IN_FLIGHT = 2  # scored but not yet stored; beyond this, polling waits for the writer
# Stored offsets are committed at most this often: a commit is a broker round trip, and a crash
# only replays what was stored since (found already answered).
COMMIT_INTERVAL_S = 0.2
COMMIT_TIMEOUT_MS = 5000  # while the broker is down, a commit gives up after this (not 30 s)
# Waits between attempts while MongoDB or the broker is unreachable: doubling up to the maximum.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
# A run out of its consumer group this long fails, so that the supervisor starts a fresh one rather
# than a run serving nothing while looking alive: one never let in (a broker refusing the member, or
# a client bug like the one clients.kafka.GroupConsumer works around), or one fallen out and never
# back. A healthy join takes at most a dead predecessor's session timeout (6 s); a broker outage
# leaves a member in its group (its state stays stable while the coordinator is unknown).
JOIN_DEADLINE_S = 45.0
# A run holding a partition it has known no position in for this long fails too, for the same
# reason: kafka-python 3.0.12's consumer was seen waiting for ever for the committed offsets of
# partitions reassigned while a broker killed under load took the group's coordinator with it, its
# run alive and serving nothing. A fresh consumer resumes from the committed offsets. A healthy
# lookup takes a round trip; a partition leader's failover, up to the request timeout (30 s).
POSITION_DEADLINE_S = 60.0
# A run holding a partition whose records wait on the broker while its position has not moved for
# this long fails too, for the same reason: in CI, a run whose broker was killed -9 under load and
# came back served nothing for minutes while thousands of requests waited, with neither of the
# checks above firing. A healthy fetch returns within a round trip once records are there; a
# partition leader's failover delays it by up to the request timeout (30 s).
STALL_DEADLINE_S = 60.0
# A run whose consumer's own end-offset lookups fail while a fresh client's answer, with records
# waiting unfetched, at this many stall checks in a row (10 s apart) fails without waiting for the
# deadline: the cluster serves and that consumer does not (kafka-python 3.0.12's, after a partition
# leader's kill -9, fetched nothing from the dead leader's partitions for minutes).
STUCK_CONSUMER_CHECKS = 2
END_OFFSETS_TIMEOUT_MS = 2000  # asking the broker for its end offsets gives up after this
LAG_REFRESH_S = 1.0  # how often the lag metric is brought up to date (reading it is local, no request)
OVERSIZED_PAYLOAD_PREFIX = 1024  # bytes of an oversized message kept in its dead letter
MAX_REASON_CHARS = 1000


@dataclass
class StreamTotals:
    batches: int = 0
    records: int = 0
    answered: int = 0
    already_answered: int = 0  # redelivered after a crash or rebalance; the first answer stands
    dead_lettered: int = 0
    shadow_failures: int = 0  # batches a challenger could not score (answered without its shadow)


@dataclass(frozen=True)
class Progress:
    """A progress window's figures: records, seconds, request-to-answer latency, lag, totals."""

    records: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    lag: int | None
    totals: dict[str, int]

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


@dataclass
class _Batch:
    """A polled batch, scored: what to store, and where each partition resumes once it is."""

    records: int
    answers: list[dict]
    dead_letters: list[dict]
    unscorable: int  # of the dead letters, those the champion could not score (the rest are invalid)
    next_offsets: dict[TopicPartition, int]


def insert_new(collection: Collection, documents: list[dict]) -> int:
    """Insert documents, skipping those whose unique key is already stored. Returns how many
    were skipped; any other write error propagates, and the batch is not committed."""
    if not documents:
        return 0
    try:
        collection.insert_many(documents, ordered=False)
        return 0
    except BulkWriteError as error:
        errors = error.details["writeErrors"]
        if any(e["code"] != DUPLICATE_KEY for e in errors):
            raise
        return len(errors)


class StoreAbandoned(Exception):
    """The worker was asked to stop while MongoDB was unreachable: the batch stays uncommitted."""


def dead_letter(record: ConsumerRecord, reason: str, max_message_bytes: int) -> dict:
    payload = record.value or b""
    oversized = len(payload) > max_message_bytes
    return {
        "_id": f"{record.topic}:{record.partition}:{record.offset}",
        "Topic": record.topic,
        "Partition": record.partition,
        "Offset": record.offset,
        "Reason": reason[:MAX_REASON_CHARS],
        # The raw bytes exactly as received; of an oversized message, only its first bytes.
        "Payload": payload[:OVERSIZED_PAYLOAD_PREFIX] if oversized else record.value,
        "PayloadBytes": len(payload),
        "PayloadTruncated": oversized,
        "ReceivedAt": dt.datetime.now(dt.UTC),
    }


class GroupNotJoined(RuntimeError):
    pass


# The broker's end offsets of some partitions, as a client of its own asks them (raises KafkaError
# when the cluster does not answer): KafkaResource.end_offsets in a run.
EndOffsets = Callable[[list[TopicPartition], int], dict[TopicPartition, int]]


class PositionsUnknown(RuntimeError):
    pass


class ConsumingStalled(RuntimeError):
    pass


class StreamDenied(RuntimeError):
    """Kafka's ACLs refuse the stream what it needs: no retry helps until an admin grants it."""


class PredictionStreamWorker:
    def __init__(self, consumer: KafkaConsumer, scorer: PipelineScorer, model_version: str,
                 database: Database, log: logging.Logger, progress_interval_s: float = 15.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 challengers: Sequence[tuple[str, PipelineScorer]] = (), explain: bool = True,
                 on_group_joined: Callable[[list[TopicPartition]], None] = lambda partitions: None,
                 join_deadline_s: float = JOIN_DEADLINE_S,
                 position_deadline_s: float = POSITION_DEADLINE_S,
                 stall_deadline_s: float = STALL_DEADLINE_S, metrics: StreamMetrics | None = None,
                 on_progress: Callable[[Progress], None] = lambda progress: None,
                 fresh_end_offsets: EndOffsets | None = None):
        self.consumer = consumer
        self.fresh_end_offsets = fresh_end_offsets
        self.on_progress = on_progress
        self.metrics = metrics or StreamMetrics()
        self.metrics.serving(model_version, [version for version, _ in challengers], explain)
        self._lag_refreshed = 0.0
        self.join_deadline_s = join_deadline_s
        self.position_deadline_s = position_deadline_s
        self.stall_deadline_s = stall_deadline_s
        # Per partition whose records wait on the broker: its position, and since when it has not moved.
        self._unmoved: dict[TopicPartition, tuple[int, float]] = {}
        self._checked_positions: dict[TopicPartition, int] = {}  # as of the last check
        self._stuck_checks = 0  # checks in a row that found the consumer stuck (STUCK_CONSUMER_CHECKS)
        self._positions_known_at = self._in_group_at = self._stall_checked = time.monotonic()
        self.on_group_joined = on_group_joined
        self._generation: int | None = None
        self.max_message_bytes = max_message_bytes
        self.scorer = scorer
        self.model_version = model_version
        self.challengers = challengers
        self.explain = explain
        # Journaled: a batch's offsets are committed once it is stored, so its answers must outlive
        # a crash of the database (with w:1 alone it acknowledges a write still in its journal buffer).
        journaled = WriteConcern(w=1, j=True)
        self.responses = database.get_collection(RESPONSES, write_concern=journaled)
        self.dead_letters = database.get_collection(DEAD_LETTERS, write_concern=journaled)
        self.log = log
        self.progress_interval_s = progress_interval_s
        self.totals = StreamTotals()
        self._window_latencies_ms: list[float] = []
        self._window_started = time.monotonic()
        self._window_records = 0
        self._stored_offsets: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self._stop_requested: Callable[[], bool] = lambda: False

    def run(self, stop_requested: Callable[[], bool]) -> StreamTotals:
        """Process micro-batches until `stop_requested()`, then store and commit the batches in
        hand before closing.

        Two stages overlap, one per core: while a writer thread stores a batch in MongoDB, this
        thread polls and scores the next. Offsets are committed in poll order and only for batches
        whose documents are stored, so the at-least-once guarantee is the same as storing and
        committing in one loop."""
        self._stop_requested = stop_requested
        in_flight: deque[tuple[_Batch, Future]] = deque()
        self._positions_known_at = self._in_group_at = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mongo-writer") as writer:
            try:
                while not stop_requested():
                    records = self.poll()
                    self.check_in_group()
                    if records:
                        batch = self.prepare(records)
                        in_flight.append((batch, writer.submit(self.store, batch)))
                    self.commit_stored(in_flight, keep_at_most=MAX_BATCHES_IN_FLIGHT)
                    if time.monotonic() - self._lag_refreshed >= LAG_REFRESH_S:
                        positions = self.positions()
                        self.metrics.held(self.partition_lags(positions))
                        self._lag_refreshed = time.monotonic()
                        self.check_positions_known(positions)
                    if time.monotonic() - self._stall_checked >= self.stall_deadline_s / 6:
                        self.check_consuming()
                    if time.monotonic() - self._window_started >= self.progress_interval_s:
                        self.report_progress()
                self.commit_stored(in_flight, keep_at_most=0)
                self.report_progress()
            except StoreAbandoned as abandoned:
                self.log.warning(f"{abandoned}; the uncommitted records will be redelivered.")
            finally:
                self.consumer.close(autocommit=False)
        return self.totals

    def poll(self) -> list[ConsumerRecord]:
        """The next records, or none while the broker is unreachable (the consumer reconnects by
        itself; this only keeps a transient error from ending the run)."""
        try:
            polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        except AuthorizationError as error:  # not transient: retrying would only hide it
            raise StreamDenied(describe_denial(
                error, f"the stream's user {self.consumer.config['sasl_plain_username']!r}",
                "read requests in its group")) from error
        except KafkaError as error:
            self.log.warning(f"Polling failed ({type(error).__name__}: {error}); retrying.")
            time.sleep(RETRY_FIRST_S)
            return []
        self._notice_rebalance()
        return [record for batch in polled.values() for record in batch]

    def _notice_rebalance(self) -> None:
        """Call `on_group_joined` with every partition held, once per completed rebalance (a new
        generation of the group), even when this member holds none: the cooperative assignor's
        listener hears only of partitions that move."""
        group = self.consumer.group_metadata()
        if group.state is MemberState.STABLE and group.generation_id != self._generation:
            self._generation = group.generation_id
            self.metrics.rebalances.inc()
            self.metrics.held(self.partition_lags(self.positions()))
            self.on_group_joined(sorted(self.consumer.assignment()))

    def prepare(self, records: list[ConsumerRecord]) -> _Batch:
        """Parse and score a polled batch into the documents to store."""
        requests: list[tuple[ConsumerRecord, PredictionRequest]] = []
        dead: list[dict] = []
        for record in records:
            try:
                requests.append((record, PredictionRequest.from_message(
                    record.value, self.max_message_bytes)))
            except InvalidRequest as error:
                dead.append(dead_letter(record, str(error), self.max_message_bytes))

        rows = [request.model_input() for _, request in requests]
        scored, unscorable = self._score(rows)
        dead += [dead_letter(requests[i][0], reason, self.max_message_bytes)
                 for i, reason in unscorable]
        shadows = self._score_challengers(rows)
        now = dt.datetime.now(dt.UTC)
        return _Batch(
            records=len(records),
            answers=[requests[i][1].response(champion, self.model_version, now, shadow=[
                (version, challenger[i]) for version, challenger in shadows])
                for i, champion in scored],
            dead_letters=dead,
            unscorable=len(unscorable),
            # Records arrive in offset order per partition, so the last one sets the position.
            next_offsets={TopicPartition(r.topic, r.partition): r.offset + 1 for r in records},
        )

    def store(self, batch: _Batch) -> tuple[int, dt.datetime]:
        """(answers already stored before, when the batch was stored); runs in the writer thread.

        While MongoDB is unreachable, retries with backoff until it is back or the worker is asked
        to stop. An attempt cut off midway may have stored part of the batch: the retry finds
        those answers already stored and counts them as already answered."""
        wait = RETRY_FIRST_S
        while True:
            try:
                already_answered = insert_new(self.responses, batch.answers)
                insert_new(self.dead_letters, batch.dead_letters)
                return already_answered, dt.datetime.now(dt.UTC)
            except ConnectionFailure as error:
                if self._stop_requested():
                    raise StoreAbandoned(f"Stopping while MongoDB is unreachable ({error})") from error
                self.log.warning(f"MongoDB unreachable ({type(error).__name__}); retrying the batch "
                                 f"in {wait:.1f}s, its offsets uncommitted.")
                time.sleep(wait)
                wait = min(2 * wait, RETRY_MAX_S)

    def commit_stored(self, in_flight: deque[tuple[_Batch, Future]], keep_at_most: int) -> None:
        """Take the oldest batches that are stored, waiting while more than `keep_at_most` are in
        flight, and commit their offsets (every COMMIT_INTERVAL_S, and always when none may stay
        in flight). A failed store raises here, and its offsets stay uncommitted."""
        while in_flight and (len(in_flight) > keep_at_most or in_flight[0][1].done()):
            batch, stored = in_flight.popleft()
            self._count(batch, *stored.result())
            self._stored_offsets.update(batch.next_offsets)
        if not self._stored_offsets or (
                keep_at_most and time.monotonic() - self._last_commit < COMMIT_INTERVAL_S):
            return
        offsets, self._stored_offsets = self._stored_offsets, {}
        self._commit(offsets)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit `offsets`. A failure never ends the run."""
        self._last_commit = time.monotonic()
        try:
            self.consumer.commit({partition: OffsetAndMetadata(offset, "", -1)
                                  for partition, offset in offsets.items()}, timeout_ms=COMMIT_TIMEOUT_MS)
        except RebalanceInProgressError as error:
            # Nothing is lost: the records are redelivered to their owner after the rebalance.
            self.log.warning(f"Offsets not committed during a rebalance ({error}); the next commit "
                             f"covers them.")
        except CommitFailedError as error:
            # The group rebalanced: the new owner of those partitions gets these records again
            # and finds them answered (duplicate _id), so nothing is lost or answered twice.
            self.log.warning(f"Offsets not committed after a rebalance ({error}); the records "
                             f"will be redelivered and skipped as already answered.")
        except KafkaError as error:
            # The broker is unreachable. Not retried: a later commit supersedes this one, and
            # until then the stored records would only be redelivered and found answered.
            self.log.warning(f"Committing offsets failed ({type(error).__name__}: {error}); the "
                             f"next commit covers them.")

    def _count(self, batch: _Batch, already_answered: int, stored_at: dt.datetime) -> None:
        self.totals.batches += 1
        self.totals.records += batch.records
        self.totals.answered += len(batch.answers) - already_answered
        self.totals.already_answered += already_answered
        self.totals.dead_lettered += len(batch.dead_letters)
        answered = len(batch.answers) - already_answered
        metrics = self.metrics
        metrics.consumed.inc(batch.records)
        metrics.batch_records.observe(batch.records)
        metrics.answered.inc(answered)
        metrics.already_answered.inc(already_answered)
        metrics.dead_lettered.labels(INVALID_REQUEST).inc(len(batch.dead_letters) - batch.unscorable)
        metrics.dead_lettered.labels(SCORING_FAILED).inc(batch.unscorable)
        self._window_records += batch.records
        latencies_s = [(stored_at - answer["RequestedAt"]).total_seconds() for answer in batch.answers
                       if answer["RequestedAt"].tzinfo is not None]
        for latency_s in latencies_s:
            metrics.request_to_answer_seconds.observe(latency_s)
        self._window_latencies_ms += [latency_s * 1000 for latency_s in latencies_s]

    def _score(self, rows: list[dict]) -> tuple[list[tuple[int, Scored]], list[tuple[int, str]]]:
        """(index, scored) for each row the champion scored and (index, reason) for the rest. The
        batch is scored in one call; only if that fails is each row tried alone, so one bad row
        cannot stop the stream."""
        if not rows:
            return [], []
        try:
            with self.metrics.score_seconds.labels(CHAMPION).time():
                return list(enumerate(self.scorer.score(rows, self.explain))), []
        except Exception:  # noqa: BLE001 - isolate the culprit below
            scored, failed = [], []
            for i, row in enumerate(rows):
                try:
                    scored.append((i, self.scorer.score([row], self.explain)[0]))
                except Exception as error:  # noqa: BLE001 - becomes a dead letter with the reason
                    failed.append((i, f"scoring failed: {type(error).__name__}: {error}"))
            return scored, failed

    def _score_challengers(self, rows: list[dict]) -> list[tuple[str, list[Scored]]]:
        """(version, scored per row) of each challenger that scored the whole batch. A challenger
        never costs an answer: one that fails is left out of this batch's documents."""
        if not rows:
            return []
        shadows = []
        for version, scorer in self.challengers:
            try:
                with self.metrics.score_seconds.labels(CHALLENGER).time():
                    shadows.append((version, scorer.score(rows, self.explain)))
            except Exception as error:  # noqa: BLE001 - the champion's answers are stored anyway
                self.totals.shadow_failures += 1
                self.metrics.shadow_failures.inc()
                self.log.warning(f"Challenger {version} failed on a batch of {len(rows)} "
                                 f"({type(error).__name__}: {error}); answers stored without it.")
        return shadows

    def positions(self) -> dict[TopicPartition, int | None]:
        """Per partition held, the offset it reads next (None while not known)."""
        # Without a timeout, `position` waits for any offset lookup or leader-epoch validation in
        # flight, which a partition leader's failover can hold for the request timeout (30 s) while
        # no partition is polled; 0 reads what the consumer knows now.
        return {partition: self.consumer.position(partition, timeout_ms=0)
                for partition in self.consumer.assignment()}

    def partition_lags(self, positions: dict[TopicPartition, int | None]
                       ) -> dict[tuple[str, int], int | None]:
        """Per partition held (`positions`), records behind the broker's high watermark as of the
        last fetch (None before the first)."""
        lags = {}
        for partition, position in positions.items():
            highwater = self.consumer.highwater(partition)
            lags[partition.topic, partition.partition] = (
                max(0, highwater - position) if highwater is not None and position is not None else None)
        return lags

    def check_in_group(self) -> None:
        """Raise GroupNotJoined once the consumer has been out of a stable membership of its group
        for `join_deadline_s` (see JOIN_DEADLINE_S): never in it, or fallen out and not back."""
        if self.consumer.group_metadata().state is MemberState.STABLE:
            self._in_group_at = time.monotonic()
        elif time.monotonic() - self._in_group_at > self.join_deadline_s:
            since = "since the run started" if self._generation is None else "after it was in it"
            raise GroupNotJoined(f"Not in the consumer group {self.consumer.config['group_id']} for "
                                 f"{self.join_deadline_s:.0f} s {since}: failing the run, so that the "
                                 f"supervisor starts a fresh one")

    def check_positions_known(self, positions: dict[TopicPartition, int | None]) -> None:
        """Raise PositionsUnknown once a held partition has had no position for
        `position_deadline_s` (see POSITION_DEADLINE_S)."""
        unknown = sorted(partition.partition for partition, position in positions.items()
                         if position is None)
        if not unknown:
            self._positions_known_at = time.monotonic()
        elif time.monotonic() - self._positions_known_at > self.position_deadline_s:
            raise PositionsUnknown(
                f"No position in partitions {unknown} of the consumer group "
                f"{self.consumer.config['group_id']} for {self.position_deadline_s:.0f} s (its "
                f"committed offsets never came): failing the run, so that the supervisor starts a "
                f"fresh one")

    def check_consuming(self) -> None:
        """Raise ConsumingStalled once a held partition has had records waiting on the broker while
        its position stayed the same for `stall_deadline_s` (see STALL_DEADLINE_S), or sooner when
        the consumer is stuck (see STUCK_CONSUMER_CHECKS). Its high watermark comes from fetches,
        which is what stalls: the broker's end offsets are asked, for the partitions whose position
        has not moved since the last check only (none while records flow)."""
        if time.monotonic() - self._stall_checked > self.stall_deadline_s / 3:
            self._restart_stall_clocks()  # the loop was held (by a MongoDB outage, say), not the fetching
        self._stall_checked = time.monotonic()
        positions = {partition: position for partition, position in self.positions().items()
                     if position is not None}
        still = {partition: position for partition, position in positions.items()
                 if self._checked_positions.get(partition) == position}
        self._checked_positions = positions
        if not still:
            self._restart_stall_clocks()
            return
        ends, own_lookup_failed = self.end_offsets(list(still))
        if ends is None:  # the cluster is away: polling waits for it too
            self._restart_stall_clocks()  # they start again once it answers, not at the outage's start
            return
        now = time.monotonic()
        unmoved = {}
        for partition, position in still.items():
            if ends.get(partition, position) > position:  # records wait
                since = self._unmoved.get(partition, (None, now))
                unmoved[partition] = (position, since[1] if since[0] == position else now)
        self._unmoved = unmoved
        self._stuck_checks = self._stuck_checks + 1 if unmoved and own_lookup_failed else 0
        if self._stuck_checks >= STUCK_CONSUMER_CHECKS:
            why = (f"the consumer's own end-offset lookups failed at {self._stuck_checks} checks in a "
                   f"row while a fresh client's answered")
            stalled = unmoved
        else:
            why = f"none was fetched for {self.stall_deadline_s:.0f} s"
            stalled = {partition: (position, since) for partition, (position, since) in unmoved.items()
                       if now - since >= self.stall_deadline_s}
        if stalled:
            topics = ", ".join(sorted(self.consumer.subscription() or ()))
            raise ConsumingStalled(
                f"Records wait on the broker in {topics} ("
                + ", ".join(f"partition {partition.partition} at offset {position} of {ends[partition]}"
                            for partition, (position, _) in sorted(stalled.items()))
                + f") and {why}: failing the run, so that the supervisor starts a fresh one")

    def _restart_stall_clocks(self) -> None:
        """Forget how long partitions have waited unmoved and how many checks found the consumer stuck."""
        self._unmoved, self._stuck_checks = {}, 0

    def end_offsets(self, partitions: list[TopicPartition]) -> tuple[dict[TopicPartition, int] | None, bool]:
        """The broker's end offsets of `partitions` (None when the cluster does not answer), and
        whether the consumer's own lookup failed. When it fails, a fresh client asks: a kafka-python
        3.0.12 consumer was seen, after a partition leader's kill -9, fetching nothing from a third
        of its partitions and failing every lookup for minutes while the cluster served the web
        app (its metadata refresh loop had ended: clients.kafka.KafkaTLSContext keeps that cause
        away, the check any other); a fresh consumer starts from fresh metadata and connections."""
        try:
            return self.consumer.end_offsets(partitions, timeout_ms=END_OFFSETS_TIMEOUT_MS), False
        except KafkaError as error:
            if self.fresh_end_offsets is None:
                return None, True
            try:
                ends = self.fresh_end_offsets(partitions, END_OFFSETS_TIMEOUT_MS)
            except KafkaError:
                return None, True
            self.log.warning(f"The consumer could not learn the end offsets of partitions "
                             f"{sorted(p.partition for p in partitions)} ({type(error).__name__}: "
                             f"{error}), a fresh client could: the cluster serves.")
            return ends, True

    def lag(self) -> int | None:
        """Records behind the broker's high watermarks, all partitions held, as of the last fetch."""
        known = [lag for lag in self.partition_lags(self.positions()).values() if lag is not None]
        return sum(known) if known else None

    def report_progress(self) -> None:
        """Log throughput, latency and lag of the window since the last report (if it saw records),
        and hand the same figures to `on_progress`."""
        elapsed = time.monotonic() - self._window_started
        latencies = self._window_latencies_ms
        if not self._window_records:
            self._window_started = time.monotonic()
            return
        progress = Progress(
            records=self._window_records, seconds=elapsed,
            p50_ms=float(np.percentile(latencies, 50)) if latencies else None,
            p95_ms=float(np.percentile(latencies, 95)) if latencies else None,
            lag=self.lag(), totals=asdict(self.totals))
        latency = (f"p50 {progress.p50_ms:.1f} ms, p95 {progress.p95_ms:.1f} ms" if latencies else "n/a")
        self.log.info(
            f"model {self.model_version}: {progress.records} records in {elapsed:.0f}s "
            f"({progress.per_second:.0f}/s), request-to-answer latency "
            f"{latency}, lag {progress.lag}; totals {progress.totals}")
        self.on_progress(progress)
        self._window_latencies_ms, self._window_records = [], 0
        self._window_started = time.monotonic()
