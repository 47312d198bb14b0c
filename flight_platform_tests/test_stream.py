"""The streaming job for real: `dg launch --job` against the broker, the Mongo-protocol server and
the model materialized this session. Each test has its own topic and consumer group."""

import json
import logging
import random
import re
import signal
import threading
import time
import uuid
from functools import partial

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.coordinator.base import MemberState
from kafka.errors import KafkaTimeoutError

from flight_platform.batch.model import ModelTrainingConfig
from flight_platform.clients.kafka import connection, create_consumer, create_producer, end_offsets
from flight_platform.clients.kafka_access import prepare_topic
from flight_platform.clients.mongo import DEAD_LETTERS, RESPONSES, create_client, find_by_ids
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest, PredictionResponse
from flight_platform.core.features import ARRIVAL_DELAY_LABELS
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer
from flight_platform.local.processes import wait_until
from flight_platform.streaming.worker import (
    ConsumingStalled,
    GroupNotJoined,
    PositionsUnknown,
    PredictionStreamWorker,
)
from flight_platform_dev.dagster_runs import latest_metadata, materialize_in_process
from flight_platform_dev.load import answered, hostile_messages, send_messages
from flight_platform_dev.metrics import announced_targets, scrape, stream_target
from flight_platform_dev.platform import PlatformProcess

ROUTES = [("JFK", "ATL", 760.0, "DL"), ("EWR", "ORD", 719.0, "UA"), ("LGA", "MIA", 1096.0, "AA"),
          ("JFK", "LAX", 2475.0, "B6")]


@pytest.fixture
def topic(settings) -> str:
    """A fresh request topic, its consumer group `group_<topic>` (the rights of the web, stream and
    batch users on both granted by the admin step)."""
    name = f"requests_{uuid.uuid4().hex[:8]}"
    prepare_topic(settings, name, f"group_{name}", partitions=3)
    return name


@pytest.fixture
def database(settings):
    with create_client(settings, Role.ADMIN) as client:
        yield client[settings.mongo_database]


def make_request(rng: random.Random, **overrides) -> PredictionRequest:
    origin, dest, distance, carrier = rng.choice(ROUTES)
    fields = dict(Carrier=carrier, FlightDate=f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                  FlightNum=str(rng.randint(1, 4000)), Origin=origin, Dest=dest,
                  DepDelay=float(rng.randint(-10, 120)), Distance=distance)
    fields.update(overrides)
    return PredictionRequest.create(**fields)


def stream_totals(stream: PlatformProcess) -> dict[str, int]:
    """The worker's totals, as logged when it stopped cleanly."""
    found = re.search(r"Stopped cleanly.*StreamTotals\(([^)]*)\)", stream.log())
    assert found, f"the stream did not stop cleanly:\n{stream.log()[-3000:]}"
    return {name: int(value) for name, value in (item.split("=") for item in found.group(1).split(", "))}


def produce(settings, topic: str, payloads: list[bytes]):
    producer = create_producer(connection(settings, Role.BATCH))
    for payload in payloads:
        producer.send(topic, payload)
    producer.flush()
    producer.close()


def current_model(settings) -> str:
    return ModelStore(settings.model_store_dir).current_version()


def test_every_request_gets_one_valid_answer(settings, start_stream, topic, database):
    rng = random.Random(1)
    requests = [make_request(rng) for _ in range(500)]
    # Unseen carrier and airports: scored through the "keep" bucket, never a crash.
    requests.append(make_request(rng, Carrier="ZZ", Origin="QQQ", Dest="XYZ", Distance=300.0))
    ids = [r.UUID for r in requests]
    stream = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    produce(settings, topic, [r.to_message() for r in requests])

    wait_until(lambda: answered(database, ids) == len(ids), 120, "every answer")
    version = current_model(settings)
    for answer in find_by_ids(database[RESPONSES], ids):
        assert answer["Prediction"] in range(4)
        assert answer["PredictionLabel"] == ARRIVAL_DELAY_LABELS[answer["Prediction"]]
        assert sum(p["Probability"] for p in answer["Probabilities"]) == pytest.approx(1, abs=1e-5)
        assert answer["ModelVersion"] == version
        assert answer["ScoredAt"] >= answer["RequestedAt"]
        # Explained: every bucket's base probability and contributions add up to its probability
        # (each figure rounded to 6 decimals).
        explanation = PredictionResponse.model_validate(answer).Explanation
        for bucket in answer["Probabilities"]:
            added_up = explanation.BaseProbabilities[bucket["Bucket"]] + sum(
                values[bucket["Bucket"]] for values in explanation.ContributionsByBucket)
            assert added_up == pytest.approx(bucket["Probability"], abs=1e-5)
    assert stream.process.poll() is None


def test_answers_are_stored_unexplained_when_explanations_are_off(settings, start_stream, topic,
                                                                  database):
    requests = [make_request(random.Random(2)) for _ in range(20)]
    ids = [r.UUID for r in requests]
    start_stream(request_topic=topic, consumer_group=f"group_{topic}", explain_answers="false")
    produce(settings, topic, [r.to_message() for r in requests])

    wait_until(lambda: answered(database, ids) == len(ids), 120, "every answer")
    assert all("Explanation" not in answer for answer in find_by_ids(database[RESPONSES], ids))


def test_malformed_messages_are_dead_lettered_the_stream_goes_on_and_its_metrics_count_them(
        settings, start_stream, topic, database):
    rng = random.Random(2)
    good = [make_request(rng) for _ in range(30)]
    bad = {
        b"{not json": "not valid JSON",
        json.dumps({"UUID": str(uuid.uuid4())}).encode(): "Carrier is required",
        json.dumps({**json.loads(good[0].to_message()), "UUID": str(uuid.uuid4()),
                    "DepDelay": "late"}).encode(): "DepDelay must be a number, got 'late'",
        json.dumps({**json.loads(good[0].to_message()), "UUID": str(uuid.uuid4()),
                    "DayOfWeek": 0}).encode(): "DayOfWeek must be a whole number from 1 to 7",
    }
    payloads = [r.to_message() for r in good[:15]] + list(bad) + [r.to_message() for r in good[15:]]
    stream = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    produce(settings, topic, payloads)

    wait_until(lambda: answered(database, [r.UUID for r in good]) == len(good), 120, "good answers")
    letters = wait_until(lambda: (found := list(database[DEAD_LETTERS].find({"Topic": topic})))
                       and len(found) == len(bad) and found, 30, "dead letters")
    by_payload = {letter["Payload"]: letter["Reason"] for letter in letters}
    for payload, reason in bad.items():
        assert reason in by_payload[payload]

    # The worker's own target, announced for Prometheus, counts exactly what it did.
    url = wait_until(lambda: stream_target(stream.log()), 30, "the worker's metrics target")
    assert url.removeprefix("http://").removesuffix("/metrics") in announced_targets(
        settings.metrics_targets_dir)
    metrics = wait_until(lambda: (found := scrape(url)).total("flight_stream_records_consumed_total")
                         == len(payloads) and found, 30, "every record counted")
    assert metrics.total("flight_stream_answers_total") == len(good)
    assert metrics.value("flight_stream_dead_letters_total", reason="invalid_request") == len(bad)
    assert metrics.value("flight_stream_dead_letters_total", reason="scoring_failed") == 0
    assert metrics.total("flight_stream_batch_records_sum") == len(payloads)
    assert metrics.total("flight_stream_request_to_answer_seconds_count") == len(good)
    assert metrics.value("flight_stream_model_info", role="champion",
                         version=current_model(settings)) == 1
    assert metrics.value("flight_stream_assigned_partitions") == 3
    assert metrics.value("flight_stream_explanations_enabled") == 1
    assert metrics.total("flight_stream_rebalances_total") >= 1

    def lags() -> list[float]:
        return [value for (name, _), value in scrape(url).values.items()
                if name == "flight_stream_consumer_lag"]
    wait_until(lambda: (found := lags()) and len(found) == 3 and sum(found) == 0, 30,
               "each partition's lag, 0 once all is read")
    stream.stop(signal.SIGTERM)
    assert url.removeprefix("http://").removesuffix("/metrics") not in announced_targets(
        settings.metrics_targets_dir), "a stopped worker's target is still announced"


def test_hostile_messages_are_dead_lettered_and_the_run_goes_on(settings, start_stream, topic,
                                                                 database):
    rng = random.Random(4)
    good = [make_request(rng) for _ in range(60)]
    hostile = hostile_messages(good[0], settings.max_message_bytes)
    payloads = [r.to_message() for r in good[:20]] + hostile[:7] + [r.to_message() for r in good[20:40]] \
        + hostile[7:] + [r.to_message() for r in good[40:]]
    stream = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    send_messages(settings, topic, payloads)

    wait_until(lambda: answered(database, [r.UUID for r in good]) == len(good), 120, "good answers")
    letters = wait_until(lambda: (found := list(database[DEAD_LETTERS].find({"Topic": topic})))
                       and len(found) == len(hostile) and found, 30, "a dead letter per hostile message")
    assert stream.process.poll() is None, "the run ended"
    for letter in letters:
        assert 0 < len(letter["Reason"]) <= 1000
        if letter["PayloadBytes"] > settings.max_message_bytes:  # refused unparsed, a prefix kept
            assert letter["PayloadTruncated"] and "over the limit" in letter["Reason"]
            assert len(letter["Payload"]) == 1024
        else:  # kept whole, exactly as received
            assert not letter["PayloadTruncated"]
            assert len(letter["Payload"] or b"") == letter["PayloadBytes"]
    assert any(letter["PayloadTruncated"] for letter in letters)


def committed_offsets(settings, topic: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(**connection(settings, Role.ADMIN), group_id=f"group_{topic}",
                             enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        consumer.close()


def produce_until(settings, topic: str, rng: random.Random, per_second: float,
                  stop: threading.Event, sent: list[str], after_stop: int) -> None:
    """Send requests at a steady rate until `stop` is set, then `after_stop` more, recording each
    UUID in `sent` once it is handed to the producer."""
    producer = create_producer(connection(settings, Role.BATCH))
    remaining = after_stop
    while remaining:
        request = make_request(rng)
        producer.send(topic, request.to_message())
        sent.append(request.UUID)
        if stop.is_set():
            remaining -= 1
        time.sleep(1 / per_second)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_stopped_mid_stream_loses_nothing_and_answers_nothing_twice(
        settings, start_stream, topic, database, stop_signal):
    first = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    first.wait_for_log("Serving model", 120, "the stream to start")
    # Requests keep arriving until the worker is gone, however fast or slow it is to stop.
    worker_stopped, sent = threading.Event(), []
    producer = threading.Thread(target=produce_until, args=(
        settings, topic, random.Random(3), 300, worker_stopped, sent, 300))
    producer.start()
    wait_until(lambda: answered(database, list(sent)) > 300, 60, "the stream to be busy")
    exit_code = first.stop(stop_signal)
    sent_before_stop = list(sent)
    worker_stopped.set()
    stored = answered(database, sent_before_stop)
    assert stored < len(sent_before_stop), "the worker was not stopped mid-stream"
    committed = sum(offset or 0 for offset in committed_offsets(settings, topic).values())
    # Offsets are committed only after the answers are stored...
    assert committed <= stored
    if stop_signal == signal.SIGTERM:
        # ...and a clean stop stores and commits the batch in hand before the run ends.
        assert "Stopped cleanly" in first.log()
        assert committed == stored
        assert exit_code != 0  # the run ends as interrupted, not as a success

    second = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    producer.join()
    ids = list(sent)
    wait_until(lambda: answered(database, ids) == len(ids), 120, "every answer after the restart")
    second.stop(signal.SIGTERM)
    replay = stream_totals(second)
    # The restarted worker got every record after the committed offsets, once...
    assert replay["records"] == len(ids) - committed
    # ...recognized each answer stored but not committed as already answered, not answering it again...
    assert replay["already_answered"] >= stored - committed
    if stop_signal == signal.SIGTERM:
        assert replay["already_answered"] == 0
    # ...and answered the rest.
    assert replay["answered"] + replay["already_answered"] == replay["records"]
    assert database[DEAD_LETTERS].count_documents({"Topic": topic}) == 0


@pytest.fixture
def two_challengers(settings):
    """Two sound but weaker candidates, trained for real: each fails only the not-worse check, so
    the model asset keeps it as a challenger. Removed afterwards: other tests serve the champion."""
    store = ModelStore(settings.model_store_dir)
    trained = []
    for trees, depth in [(2, 3), (3, 5)]:
        config = ModelTrainingConfig(num_trees=trees, max_depth=depth).model_dump()
        # The run fails on the blocking check that kept the candidate from `current`.
        materialize_in_process(["flight_delay_model"],
                               run_config={"ops": {"flight_delay_model": {"config": config}}})
        metadata = latest_metadata("flight_delay_model")
        assert metadata["challenger"] is True and metadata["promoted"] is False, metadata
        trained.append(metadata["model_version"])
    try:
        yield trained
    finally:
        for version in trained:
            store.remove_challenger(version)


def test_challengers_are_scored_beside_the_champion_which_alone_is_served(
        settings, materialized, two_challengers, start_stream, topic, database):
    store = ModelStore(settings.model_store_dir)
    assert store.challengers() == two_challengers  # kept automatically, the newest two
    rng = random.Random(9)
    requests = [make_request(rng) for _ in range(200)]
    ids = [r.UUID for r in requests]
    stream = start_stream(request_topic=topic, consumer_group=f"group_{topic}")
    produce(settings, topic, [r.to_message() for r in requests])
    wait_until(lambda: answered(database, ids) == len(ids), 120, "every answer")

    champion = store.current_version()
    scorers = {v: PipelineScorer.load(store.pipeline_dir(v)) for v in [champion, *two_challengers]}
    rows = [r.model_input() for r in requests]
    expected = {v: dict(zip(ids, scorer.probabilities(rows), strict=True)) for v, scorer in scorers.items()}
    explained = {v: dict(zip(ids, scorer.score(rows), strict=True)) for v, scorer in scorers.items()}
    for answer in find_by_ids(database[RESPONSES], ids):
        # The champion's answer is what the champion alone gives: the challengers change nothing.
        assert answer["ModelVersion"] == champion
        assert [p["Probability"] for p in answer["Probabilities"]] == pytest.approx(
            expected[champion][answer["_id"]], abs=1e-6)
        assert [s["ModelVersion"] for s in answer["Shadow"]] == two_challengers
        assert answer["Explanation"] == explained[champion][answer["_id"]].explanation
        for shadow in answer["Shadow"]:
            assert [p["Probability"] for p in shadow["Probabilities"]] == pytest.approx(
                expected[shadow["ModelVersion"]][answer["_id"]], abs=1e-6)
            assert shadow["Explanation"] == explained[shadow["ModelVersion"]][answer["_id"]].explanation
    disagreements = sum(expected[champion][i].argmax() != expected[v][i].argmax()
                        for v in two_challengers for i in ids)
    assert disagreements > 0, "models that always agree would make this comparison meaningless"
    assert f"challengers {', '.join(two_challengers)}" in stream.log()


def test_consumers_polling_briefly_through_a_rebalance_join_their_group(running_services, settings):
    """A new topic's partitions appear just after its first consumer joins, so its group rebalances
    again at once; a poll timing out within that rebalance must not leave the member out of the group
    (clients.kafka.GroupConsumer)."""
    def joined(consumer) -> bool:
        consumer.poll(timeout_ms=1)
        return consumer.group_metadata().state is MemberState.STABLE and len(consumer.assignment()) == 3

    for attempt in range(10):
        topic = f"requests_{uuid.uuid4().hex[:8]}"
        prepare_topic(settings, topic, f"group_{topic}", partitions=3)
        consumer = create_consumer(connection(settings, Role.STREAM), f"group_{topic}", topic,
                                   session_timeout_ms=6000)
        try:
            wait_until(partial(joined, consumer), 20, f"consumer {attempt} to join its group", interval=0)
        finally:
            consumer.close(autocommit=False)


def test_a_worker_without_positions_in_time_fails_its_run(running_services, settings, topic, database):
    """A member of its group that never learns where to read (kafka-python 3.0.12, its group's
    coordinator killed in a failover, waited for ever for the committed offsets): its run fails at
    the deadline, for the supervisor to start a fresh one, instead of serving nothing while looking
    alive."""
    group = f"no_positions_{topic}"
    prepare_topic(settings, topic, group, partitions=3)
    consumer = create_consumer(connection(settings, Role.STREAM), group, topic, session_timeout_ms=6000)
    consumer.position = lambda partition, timeout_ms=None: None  # as the waiting consumer answered
    worker = PredictionStreamWorker(consumer, scorer=None, model_version="none", database=database,
                                    log=logging.getLogger(__name__), position_deadline_s=3)
    given_up = time.monotonic() + 60
    with pytest.raises(PositionsUnknown, match=rf"partitions \[0, 1, 2\] of the consumer group {group}"):
        worker.run(stop_requested=lambda: time.monotonic() > given_up)


def test_a_worker_not_in_its_group_in_time_fails_its_run(running_services, settings, topic, database):
    """A member the broker never lets in (a session timeout under the broker's minimum): its run
    fails at the deadline, for the supervisor to start a fresh one, instead of serving nothing while
    looking alive."""
    group = f"never_joins_{topic}"
    prepare_topic(settings, topic, group, partitions=3)  # the stream's user may join it
    consumer = create_consumer(connection(settings, Role.STREAM), group, topic, session_timeout_ms=1000)
    worker = PredictionStreamWorker(consumer, scorer=None, model_version="none", database=database,
                                    log=logging.getLogger(__name__), join_deadline_s=3)
    with pytest.raises(GroupNotJoined, match=rf"group {group} for 3 s since the run started"):
        worker.run(stop_requested=lambda: False)


def test_a_worker_fallen_out_of_its_group_too_long_fails_its_run(running_services, settings, topic,
                                                                  database):
    """A member that joined, then fell out of its group and did not get back in (holding no
    partition, so no position is missing either): its run fails at the deadline, for the
    supervisor to start a fresh one."""
    group = f"falls_out_{topic}"
    prepare_topic(settings, topic, group, partitions=3)
    consumer = create_consumer(connection(settings, Role.STREAM), group, topic, session_timeout_ms=6000)
    membership = consumer.group_metadata

    def fall_out(_partitions) -> None:  # from now on, as a member stuck rejoining answers
        consumer.group_metadata = lambda: membership()._replace(state=MemberState.UNJOINED)

    worker = PredictionStreamWorker(consumer, scorer=None, model_version="none", database=database,
                                    log=logging.getLogger(__name__), join_deadline_s=3,
                                    on_group_joined=fall_out)
    given_up = time.monotonic() + 60
    with pytest.raises(GroupNotJoined, match=rf"group {group} for 3 s after it was in it"):
        worker.run(stop_requested=lambda: time.monotonic() > given_up)


def lookups_fail(partitions, timeout_ms):
    raise KafkaTimeoutError(f"no end offsets in {timeout_ms} ms")


def paused_worker(settings, topic, database, fresh_end_offsets, own_lookups_fail: bool,
                  joined=lambda: None) -> PredictionStreamWorker:
    """A member in its group with its positions known that fetches nothing (its partitions paused)
    while 30 requests wait on the broker; its own end-offset lookups fail if `own_lookups_fail`."""
    consumer = create_consumer(connection(settings, Role.STREAM), f"group_{topic}", topic,
                               session_timeout_ms=6000)
    if own_lookups_fail:
        consumer.end_offsets = lookups_fail

    def stop_fetching_then_requests_arrive(partitions) -> None:
        consumer.pause(*partitions)
        produce(settings, topic, [b"{}"] * 30)
        joined()

    return PredictionStreamWorker(consumer, scorer=None, model_version="none", database=database,
                                  log=logging.getLogger(__name__), stall_deadline_s=3,
                                  on_group_joined=stop_fetching_then_requests_arrive,
                                  fresh_end_offsets=fresh_end_offsets)


@pytest.mark.parametrize("own_lookups_fail", [False, True], ids=["own lookups answer", "own lookups fail"])
def test_a_worker_fetching_nothing_while_requests_wait_fails_its_run(running_services, settings, topic,
                                                                     database, own_lookups_fail):
    """A member that fetches nothing while requests wait on the broker (as a run did in CI once its
    broker, killed -9 under load, was back): its run fails at the deadline, for the supervisor to
    start a fresh one. When the consumer's own end-offset lookups fail too while a fresh client's
    answer (as a kafka-python consumer's did for minutes after a partition leader's kill -9), it
    fails at the second check that finds it so, before the deadline."""
    fresh = partial(end_offsets, connection(settings, Role.STREAM))
    worker = paused_worker(settings, topic, database, fresh, own_lookups_fail)
    why = ("the consumer's own end-offset lookups failed at 2 checks in a row while a fresh client's "
           "answered" if own_lookups_fail else "none was fetched for 3 s")
    given_up = time.monotonic() + 60
    with pytest.raises(ConsumingStalled, match=rf"Records wait on the broker in {topic} \(.*\) and "
                                               rf"{why}: failing the run") as stalled:
        worker.run(stop_requested=lambda: time.monotonic() > given_up)
    behind = re.findall(r"partition \d at offset (\d+) of (\d+)", str(stalled.value))
    assert behind and all(int(position) < int(end) for position, end in behind), stalled.value


def test_a_worker_whose_cluster_does_not_answer_waits_for_it(running_services, settings, topic, database):
    """When no client gets an answer (the cluster is away), fetching nothing is the outage's doing:
    the run waits for the cluster past the deadline instead of failing (a fresh run could not join)."""
    joined_at = []
    worker = paused_worker(settings, topic, database, lookups_fail, own_lookups_fail=True,
                           joined=lambda: joined_at.append(time.monotonic()))
    given_up = time.monotonic() + 60
    totals = worker.run(stop_requested=lambda: time.monotonic() > (
        joined_at[0] + 2 * worker.stall_deadline_s if joined_at else given_up))
    assert joined_at and totals.answered == 0
