"""End-to-end latency and throughput of the streaming path, on a private stack started as `make run`
starts it: request produced to Kafka -> scored by the sensor-launched Dagster run -> response
document readable in MongoDB.

    .venv/bin/python -m benchmarks.stream [--rates 20,500,2000] [--seconds 15] [--burst 40000] [--workers 1]
        [--sample-every 20] [--explain-answers off]

At rates above 100/s every 20th request is timed, at lower ones every request: a poller asks
MongoDB for the oldest unanswered timed requests every 5 ms, as the web page polls, only faster.
Timing every request at a high rate would cost the single-process local Mongo-protocol server
much of the capacity being measured (a `$in` lookup costs about 0.2 ms per id; a change stream,
available only without --standalone, about a third of its insert rate).
Afterwards every request is checked for its answer. `--explain-answers off` serves answers
without their explanation (FLIGHT_PLATFORM_EXPLAIN_ANSWERS), to measure what explaining costs.
Prints figures; asserts nothing. Targets on 2 cores: p50 <= 25 ms, p99 <= 100 ms, >= 2,000 req/s
sustained.
"""

import argparse
import multiprocessing
import os
import threading
import time

from benchmarks.private_platform import percentiles, request_factory, running_platform
from flight_platform.clients.kafka import Connection, connection, create_producer
from flight_platform.clients.mongo import RESPONSES, count_by_ids, create_client, find_by_ids
from flight_platform.clients.security import Role
from flight_platform.local.processes import wait_until
from flight_platform.replay import paced
from flight_platform.settings import Settings
from flight_platform_dev.drills import RECOVERY_TIMEOUT_S
from flight_platform_dev.platform import serving_runs

SAMPLE_EVERY = 20
TIME_EVERY_REQUEST_UP_TO = 100  # requests per second
POLL_INTERVAL_S = 0.005
POLL_WINDOW = 10  # oldest unanswered sampled requests asked for per poll


def produce(kafka_connection: Connection, topic: str, messages: list[tuple[str, bytes]],
            rate: float | None, sent: dict) -> None:
    """In its own process (the measuring process must not compete for the GIL): send the
    messages, paced at `rate` per second (None: as fast as possible); report send times."""
    producer = create_producer(kafka_connection)
    times = {}
    for request_id, payload in paced(messages, rate):
        times[request_id] = time.time()
        producer.send(topic, payload, key=request_id.encode())
    producer.flush()
    producer.close()
    sent.update(times)


def new_messages(settings: Settings, count: int) -> list[tuple[str, bytes]]:
    """(request id, payload) of `count` new requests, made up front: measure sending, not making."""
    make_request = request_factory(settings, seed=count)
    return [(request.UUID, request.to_message()) for request in
            (make_request() for _ in range(count))]


def send(settings: Settings, messages: list[tuple[str, bytes]],
         rate: float | None = None) -> dict[str, float]:
    """Send from another process; returns each request's send time."""
    with multiprocessing.Manager() as manager:
        sent = manager.dict()
        producer = multiprocessing.Process(target=produce, args=(
            connection(settings, Role.BATCH), settings.request_topic, messages, rate, sent))
        producer.start()
        producer.join()
        return dict(sent)


class AnswerPoller(threading.Thread):
    """Records when each sampled request's response document becomes readable."""

    def __init__(self, settings: Settings, messages: list[tuple[str, bytes]], timeout_s: float,
                 sample_every: int = SAMPLE_EVERY):
        super().__init__(daemon=True)
        # As the web app reads answers.
        self.responses = create_client(settings, Role.WEB)[settings.mongo_database][RESPONSES]
        self.request_ids = [request_id for request_id, _ in messages]
        self.pending = self.request_ids[::sample_every]  # in send order: the oldest come first
        self.deadline = time.monotonic() + timeout_s
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        while self.pending and time.monotonic() < self.deadline:
            window = self.pending[:POLL_WINDOW]
            found = {doc["_id"] for doc in find_by_ids(self.responses, window, {"_id": 1})}
            now = time.time()
            self.seen.update(dict.fromkeys(found, now))
            self.pending = [i for i in window if i not in found] + self.pending[POLL_WINDOW:]
            time.sleep(POLL_INTERVAL_S)

    def answered(self) -> int:
        """How many of all the requests (not only the sampled ones) have their answer stored."""
        return count_by_ids(self.responses, self.request_ids)

    def latencies_ms(self, sent: dict[str, float]) -> list[float]:
        """Send -> answer readable, of each sampled request that was answered."""
        return [(self.seen[i] - sent[i]) * 1000 for i in self.seen]

    def report(self, sent: dict[str, float]) -> str:
        latencies = self.latencies_ms(sent)
        span = max(self.seen.values()) - min(sent.values())
        answered = self.answered()
        return (f"{answered:,}/{len(sent):,} answered, {answered / span:,.0f} req/s end to end   "
                f"latency ({len(latencies):,} sampled) {percentiles(latencies)}")


def measure(settings: Settings, count: int, rate: float | None,
            sample_every: int = SAMPLE_EVERY) -> tuple[AnswerPoller, dict[str, float]]:
    """Send `count` new requests at `rate`, timing every `sample_every`th until it is answered;
    returns the poller (when each was answered) and each request's send time."""
    messages = new_messages(settings, count)
    poller = AnswerPoller(settings, messages, timeout_s=600, sample_every=sample_every)
    poller.start()
    sent = send(settings, messages, rate)
    poller.join()
    return poller, sent


def phase(settings: Settings, count: int, rate: float | None, sample_every: int = SAMPLE_EVERY) -> str:
    poller, sent = measure(settings, count, rate, sample_every)
    offered = f"{rate:,.0f}/s offered" if rate else "all at once"
    return f"{count:>7,} {offered:>14}: {poller.report(sent)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,500,2000", help="steady request rates per second")
    parser.add_argument("--seconds", type=float, default=15, help="duration of each steady phase")
    parser.add_argument("--burst", type=int, default=40000, help="requests sent at once at the end")
    parser.add_argument("--workers", type=int, default=1, help="stream workers in the consumer group")
    parser.add_argument("--sample-every", type=int, default=SAMPLE_EVERY,
                        help=f"time every Nth request at rates above {TIME_EVERY_REQUEST_UP_TO}/s")
    parser.add_argument("--explain-answers", choices=["on", "off"], default="on",
                        help="whether the stream explains each answer")
    args = parser.parse_args()
    os.environ["FLIGHT_PLATFORM_STREAM_WORKERS"] = str(args.workers)
    os.environ["FLIGHT_PLATFORM_EXPLAIN_ANSWERS"] = "true" if args.explain_answers == "on" else "false"
    with running_platform() as platform:
        with platform.instance() as instance:
            wait_until(lambda: len(serving_runs(instance)) == args.workers, RECOVERY_TIMEOUT_S,
                       f"{args.workers} stream workers serving")
        results = [phase(platform.settings, int(rate * args.seconds), rate,
                         1 if rate <= TIME_EVERY_REQUEST_UP_TO else args.sample_every)
                   for rate in map(float, args.rates.split(","))]
        if args.burst:
            results.append(phase(platform.settings, args.burst, rate=None))
    print(f"\nStreaming path, {args.workers} worker(s), explanations {args.explain_answers}: Kafka "
          f"produce -> Dagster streaming run -> MongoDB document visible")
    print("\n".join(results))


if __name__ == "__main__":
    main()
