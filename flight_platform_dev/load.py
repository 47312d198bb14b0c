"""Requests for a private platform: made for real routes, sent at a steady rate straight to Kafka
or through the web app, and the hostile messages no producer may stop the stream with."""

import itertools
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka.errors import KafkaError
from pymongo.database import Database

from flight_platform.clients.kafka import close_in_background, connection, create_producer
from flight_platform.clients.mongo import DISTANCES, RESPONSES, count_by_ids
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest
from flight_platform.local import processes
from flight_platform.replay import paced
from flight_platform.settings import Settings


def request_factory(database: Database, seed: int = 1) -> Callable[[], PredictionRequest]:
    """Makes requests for real routes (from `origin_dest_distances`) on random 2013 dates, each
    stamped when it is made."""
    routes = list(database[DISTANCES].find({}, {"_id": 0}))
    if not routes:
        raise RuntimeError(f"{database.name}.{DISTANCES} is empty: materialize the assets first")
    rng = random.Random(seed)

    def make() -> PredictionRequest:
        route = rng.choice(routes)
        return PredictionRequest.create(
            Carrier=rng.choice(route["Carriers"]),
            FlightDate=f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            FlightNum=str(rng.randint(1, 5000)), Origin=route["Origin"], Dest=route["Dest"],
            DepDelay=float(rng.randint(-15, 180)), Distance=route["Distance"])

    return make


@dataclass
class SteadyLoad:
    """Sends requests at `rate` per second from a thread until `stop()`, straight to Kafka. A
    request counts as sent once the broker has acknowledged it; one the broker refused (it was
    down) is counted apart, as the web app would have answered it with a 503."""

    settings: Settings
    make_request: Callable[[], PredictionRequest]
    rate: float
    acked: dict[str, float] = field(default_factory=dict)  # request id -> when it was sent
    refused: int = 0
    errors: list[str] = field(default_factory=list)  # answers that are neither OK nor refused

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._send, name="steady-load", daemon=True)
        self._producer = None

    def start(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.acked)

    def ids_sent_since(self, since_wall: float) -> list[str]:
        with self._lock:  # the sending thread adds to `acked` meanwhile
            return [i for i, sent_at in self.acked.items() if sent_at >= since_wall]

    def publish(self, request: PredictionRequest) -> str | None:
        """The request's id once the broker acknowledged it, None if it did not. As the web app
        does, a producer whose send failed is replaced."""
        try:
            if self._producer is None:
                self._producer = create_producer(connection(self.settings, Role.BATCH))
            self._producer.send(self.settings.request_topic, request.to_message(),
                                key=request.UUID.encode()).get(timeout=10)
            return request.UUID
        except KafkaError:
            if self._producer is not None:
                close_in_background(self._producer)
            self._producer = None
            return None

    def _send(self) -> None:
        for _ in paced(itertools.count(), self.rate):
            if self._stop.is_set():
                break
            request = self.make_request()
            sent_at = time.time()
            request_id = self.publish(request)
            with self._lock:
                if request_id:
                    self.acked[request_id] = sent_at
                else:
                    self.refused += 1
        if self._producer is not None:
            close_in_background(self._producer)


class WebLoad(SteadyLoad):
    """The same load as a person's page sends it: POSTs to the web app, which publishes each one
    and answers OK once Kafka acknowledged it, 503 when it could not; anything else is an error."""

    def publish(self, request: PredictionRequest) -> str | None:
        form = {name: getattr(request, name) for name in
                ("Carrier", "FlightDate", "FlightNum", "Origin", "Dest", "DepDelay")}
        post = urllib.request.Request(
            f"http://{self.settings.web_host}:{self.settings.web_port}/flights/delays/predict/"
            f"classify_realtime", data=json.dumps(form).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(post, timeout=30) as answer:
                return json.load(answer)["id"]  # the app makes the request anew, with its own id
        except urllib.error.HTTPError as error:
            if error.code != 503:
                with self._lock:
                    self.errors.append(f"{error.code}: {error.read()[:200]!r}")
            return None
        except OSError as error:
            with self._lock:
                self.errors.append(f"no answer: {error}")
            return None


def answered(database: Database, ids: list[str]) -> int:
    return count_by_ids(database[RESPONSES], ids)


def seconds_until_serving(database: Database, make_request: Callable[[], PredictionRequest],
                          settings: Settings, since: float, timeout: float) -> float:
    """Send a fresh request every half second until one is answered; seconds from `since`
    (time.monotonic()) to that answer."""
    producer = create_producer(connection(settings, Role.BATCH))
    sent: list[str] = []
    try:
        def answered_now() -> bool:
            request = make_request()
            try:
                producer.send(settings.request_topic, request.to_message()).get(timeout=5)
                sent.append(request.UUID)
            except KafkaError:
                pass
            return answered(database, sent) > 0

        processes.wait_until(answered_now, timeout, "the stream to serve again", interval=0.5)
        return time.monotonic() - since
    finally:
        producer.close(timeout=5)


def hostile_messages(valid: PredictionRequest, max_message_bytes: int) -> list[bytes | None]:
    """Messages any producer with access to the topic could send; none may stop the stream."""
    message = json.loads(valid.to_message())
    return [
        b'{"a":' * 6_000 + b"1" + b"}" * 6_000,  # 30 KB of nesting: RecursionError in json.loads
        b"[" * 100_000,
        json.dumps({**message, "padding": "x" * max_message_bytes}).encode(),  # oversized
        json.dumps({**message, "Carrier": "A" * 50_000}).encode(),  # a huge field under the limit
        b"\xff\xfe\x00garbage", b"", None, b"null", b"[1, 2]",
        json.dumps({**message, "DepDelay": "5"}).encode(),
        json.dumps({**message, "DayOfWeek": message["DayOfWeek"] % 7 + 1}).encode(),
        valid.to_message().replace(b'"DepDelay":', b'"DepDelay":NaN,"x":', 1),
        valid.to_message().replace(b'"Distance":', b'"Distance":1e999,"x":', 1),
    ]


def send_messages(settings: Settings, topic: str, payloads: list[bytes | None]) -> None:
    """Each payload as one message, acknowledged before the next (a null one needs a key), sent as
    the batch tools' user: any producer allowed on the topic could send them."""
    producer = create_producer(connection(settings, Role.BATCH))
    try:
        for payload in payloads:
            producer.send(topic, payload, key=b"drill").get(timeout=10)
    finally:
        producer.close(timeout=5)
