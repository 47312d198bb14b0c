"""End-to-end latency and throughput of the streaming path, on a private stack started as `make run`
starts it: request produced to Kafka -> scored by the sensor-launched Dagster run -> response
document readable in MongoDB (seen through a change stream).

    .venv/bin/python benchmarks/stream.py [--rates 500,2000] [--seconds 15] [--burst 40000]

Prints figures; asserts nothing. Targets on 2 cores: p50 <= 25 ms, p99 <= 100 ms, >= 2,000 req/s.
"""

import argparse
import multiprocessing
import threading
import time

from pymongo import MongoClient

from benchmarks.private_platform import percentiles, request_factory, running_stack
from flight_platform.messaging import create_producer
from flight_platform.mongo import RESPONSES
from flight_platform.settings import Settings


def produce(settings: Settings, rate: float | None, count: int, sent: dict) -> None:
    """In its own process (the measuring process must not compete for the GIL): send `count`
    requests, paced at `rate` per second (None: as fast as possible); report send times."""
    make_request = request_factory(settings, seed=count)
    requests = [make_request() for _ in range(count)]  # made up front: measure sending, not making
    producer = create_producer(settings.kafka_bootstrap_servers)
    started = time.monotonic()
    times = {}
    for i, request in enumerate(requests):
        if rate:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        times[request.UUID] = time.time()
        producer.send(settings.request_topic, request.to_message(), key=request.UUID.encode())
    producer.flush()
    producer.close()
    sent.update(times)


class AnswerObserver(threading.Thread):
    """Records when each response document becomes visible, from a change stream on the collection."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.client = MongoClient(settings.mongo_uri)
        self.collection = self.client[settings.mongo_database][RESPONSES]
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        with self.collection.watch([{"$match": {"operationType": "insert"}}],
                                   max_await_time_ms=5) as stream:
            self.ready.set()
            for change in stream:
                self.seen[change["fullDocument"]["UUID"]] = time.time()


def run_phase(settings: Settings, observer: AnswerObserver, rate: float | None, count: int) -> str:
    with multiprocessing.Manager() as manager:
        sent = manager.dict()
        producer = multiprocessing.Process(target=produce, args=(settings, rate, count, sent))
        producer.start()
        producer.join()
        sent = dict(sent)
    deadline = time.monotonic() + 120
    while any(uuid not in observer.seen for uuid in sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    answered = {uuid: observer.seen[uuid] for uuid in sent if uuid in observer.seen}
    latencies = [(answered[uuid] - sent[uuid]) * 1000 for uuid in answered]
    span = max(answered.values()) - min(sent.values())
    offered = f"{rate:,.0f}/s offered" if rate else "burst"
    return (f"{offered:>16}: {len(answered):,}/{count:,} answered, {len(answered) / span:,.0f} req/s "
            f"end to end   latency {percentiles(latencies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="500,2000", help="steady request rates per second")
    parser.add_argument("--seconds", type=float, default=15, help="duration of each steady phase")
    parser.add_argument("--burst", type=int, default=40000, help="requests sent at once at the end")
    args = parser.parse_args()
    with running_stack() as settings:
        observer = AnswerObserver(settings)
        observer.start()
        observer.ready.wait()
        results = [run_phase(settings, observer, rate, int(rate * args.seconds))
                   for rate in map(float, args.rates.split(","))]
        results.append(run_phase(settings, observer, None, args.burst))
    print("\nStreaming path: Kafka produce -> Dagster streaming run -> MongoDB document visible")
    print("\n".join(results))


if __name__ == "__main__":
    main()
