"""The web app's Kafka producer, MongoDB database, route table and answer watch, with failures
turned into one error type."""

import threading

from kafka import KafkaProducer
from kafka.errors import AuthorizationError, KafkaError
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError

from flight_platform.clients import kafka, mongo
from flight_platform.clients.kafka_diagnosis import Diagnosis, describe_denial, diagnose_role
from flight_platform.clients.security import CredentialError, Role
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
        self._mongo: MongoClient | None = None  # as the web user, made on first use
        self._mongo_lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self.route_table = RouteTable(lambda: mongo.known_routes(self.database))
        self.answer_watch = AnswerWatch(
            lambda request_ids: self.database[mongo.RESPONSES].find({"_id": {"$in": request_ids}}))

    @property
    def database(self) -> Database:
        """The database, read as the web user. Its client is made on first use, so an app started
        before its password exists (the local stack makes it at its first start) recovers; until
        then a missing password is a PyMongoError like an unreachable server (a 503 naming it)."""
        with self._mongo_lock:
            if self._mongo is None:
                try:
                    self._mongo = mongo.create_client(self.settings, Role.WEB,
                                                      timeout_ms=TIMEOUT_S * 1000)
                except CredentialError as error:
                    raise ConfigurationError(str(error)) from None
            return self._mongo[self.settings.mongo_database]

    def _get_producer(self) -> KafkaProducer:
        """Created on first use and again after a failure (see `_drop_producer`), so the app
        recovers by itself once the broker is back. It logs in as the web app's user, which may
        only write and describe the request topic (the admin step creates it)."""
        with self._producer_lock:
            if self._producer is None:
                try:
                    self._producer = kafka.create_producer(kafka.connection(self.settings, Role.WEB),
                                                           timeout_ms=TIMEOUT_S * 1000, linger_ms=LINGER_MS)
                except CredentialError as error:
                    raise ServiceUnavailable(f"Kafka: {error}") from error
                except KafkaError as error:  # kafka-python says only "Unable to bootstrap": why?
                    raise ServiceUnavailable(diagnose_role(self.settings, Role.WEB).reason) from error
            return self._producer

    def publish(self, request: PredictionRequest) -> None:
        """Return only once the broker has acknowledged the request (acks=all): a request the
        user is told is accepted is on the topic."""
        producer = self._get_producer()
        try:
            producer.send(self.settings.request_topic, request.to_message(),
                          key=request.UUID.encode()).get(timeout=TIMEOUT_S)
        except AuthorizationError as error:
            self._drop_producer(producer)
            raise ServiceUnavailable(describe_denial(
                error, self.settings.kafka_security.describe(Role.WEB), "write requests")) from error
        except KafkaError as error:
            self._drop_producer(producer)
            raise ServiceUnavailable(
                f"Kafka did not acknowledge the request: {type(error).__name__}: {error}") from error

    def _drop_producer(self, producer: KafkaProducer) -> None:
        """Forget a producer whose send failed; the next request makes a producer anew, and the
        failed one finishes or expires its records in the
        background. A failed idempotent producer of kafka-python 3.0.12 does not recover by
        itself: once a batch expires after it was sent (a broker died holding it), it drops its
        producer id and never asks for a new one, so every later send would time out."""
        with self._producer_lock:
            if self._producer is producer:  # not one another thread has made since
                self._producer = None
        kafka.close_in_background(producer)

    def health(self) -> dict[str, dict]:
        return {
            "kafka": self._kafka_health(),
            "mongo": self._mongo_health(),
        }

    def _kafka_health(self) -> dict:
        """Whether the web user can log in and is answered; if not, why (which user and setting,
        never the password)."""
        try:
            diagnosis = diagnose_role(self.settings, Role.WEB)
        except CredentialError as error:
            diagnosis = Diagnosis(False, str(error))
        return {"reachable": diagnosis.ok, "bootstrap_servers": self.settings.kafka_bootstrap_servers,
                **({} if diagnosis.ok else {"error": diagnosis.reason})}

    def _mongo_health(self) -> dict:
        """Whether the web user can log in and ping; if not, why (a refused login names the user
        and the settings that give it and its password, never the password)."""
        error = mongo.ping(self.settings, Role.WEB)
        return {"reachable": error is None, "database": self.settings.mongo_database,
                **({"error": error} if error else {})}
