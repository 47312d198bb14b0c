"""The web app's Kafka producer, MongoDB database, route table and answer watch, with failures
turned into one error type."""

import threading

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pymongo.database import Database

from flight_platform.clients import kafka, mongo
from flight_platform.core.contract import PredictionRequest
from flight_platform.settings import Settings
from web.answer_watch import AnswerWatch
from web.route_table import RouteTable

# A person is waiting on the page: fail within seconds rather than Kafka's default minute.
TIMEOUT_S = 3
# Concurrent POSTs share a produce request: 5 ms beat 0, 2 and 10 ms at 16 and 64 clients
# (benchmarks/web.py): fewer, fuller batches cost the broker, the stream and the app less per request.
LINGER_MS = 5


class ServiceUnavailable(Exception):
    pass


class ServiceClients:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._mongo = mongo.create_client(settings.mongo_uri, timeout_ms=TIMEOUT_S * 1000)
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self.route_table = RouteTable(lambda: mongo.known_routes(self.database))
        self.answer_watch = AnswerWatch(
            lambda request_ids: self.database[mongo.RESPONSES].find({"_id": {"$in": request_ids}}))

    @property
    def database(self) -> Database:
        return self._mongo[self.settings.mongo_database]

    def _get_producer(self) -> KafkaProducer:
        """Created, with the topic, on first use and again after a failure (see `_drop_producer`),
        so the app recovers by itself once the broker is back."""
        with self._producer_lock:
            if self._producer is None:
                servers = self.settings.kafka_bootstrap_servers
                try:
                    kafka.ensure_request_topic(self.settings)
                    self._producer = kafka.create_producer(servers, timeout_ms=TIMEOUT_S * 1000,
                                                           linger_ms=LINGER_MS)
                except KafkaError as error:
                    raise ServiceUnavailable(f"Kafka at {servers} is unreachable: {error}") from error
            return self._producer

    def publish(self, request: PredictionRequest) -> None:
        """Return only once the broker has acknowledged the request (acks=all): a request the
        user is told is accepted is on the topic."""
        producer = self._get_producer()
        try:
            producer.send(self.settings.request_topic, request.to_message(),
                          key=request.UUID.encode()).get(timeout=TIMEOUT_S)
        except KafkaError as error:
            self._drop_producer(producer)
            raise ServiceUnavailable(
                f"Kafka did not acknowledge the request: {type(error).__name__}: {error}") from error

    def _drop_producer(self, producer: KafkaProducer) -> None:
        """Forget a producer whose send failed; the next request makes a producer (and the topic,
        if it is missing) anew, and the failed one finishes or expires its records in the
        background. A failed idempotent producer of kafka-python 3.0.12 does not recover by
        itself: once a batch expires after it was sent (a broker died holding it), it drops its
        producer id and never asks for a new one, so every later send would time out."""
        with self._producer_lock:
            if self._producer is producer:  # not one another thread has made since
                self._producer = None
        kafka.close_in_background(producer)

    def health(self) -> dict[str, dict]:
        return {
            "kafka": {"reachable": kafka.broker_reachable(self.settings.kafka_bootstrap_servers),
                      "bootstrap_servers": self.settings.kafka_bootstrap_servers},
            "mongo": {"reachable": mongo.server_reachable(self.settings.mongo_uri),
                      "database": self.settings.mongo_database},
        }
