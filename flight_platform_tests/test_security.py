"""The secured stack under attack: each attempt refused, with an error naming the user, the setting
or the resource; passwords never shown; the read-only UI; and the open opt-out kept working.

The Kafka attacks run against the session's broker (secured by default, as `make run` starts it);
the read-only UI and the search for passwords against a private stack of this module's."""

import contextlib
import logging
import os
import random
import secrets
import select
import socket
import struct
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ScramMechanism, UserScramCredentialUpsertion
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from flight_platform.clients import kafka_access
from flight_platform.clients.kafka import connection, create_consumer, create_producer, tls_context
from flight_platform.clients.kafka_diagnosis import diagnose, diagnose_role
from flight_platform.clients.mongo import RESPONSES, count_by_ids, create_client
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest
from flight_platform.local import services
from flight_platform.local.processes import wait_until
from flight_platform.settings import load_settings, private_environment
from flight_platform.streaming.worker import PredictionStreamWorker, StreamDenied
from flight_platform_dev.dagster_runs import graphql
from flight_platform_dev.platform import serving_run
from web.app import create_app

pytestmark = pytest.mark.services

# The stream's passwords of this module's stack come from the environment, as a real deployment's
# would: the resources then carry them as EnvVar.
STREAM_PASSWORDS = {"FLIGHT_PLATFORM_KAFKA_STREAM_PASSWORD": secrets.token_urlsafe(24),
                    "FLIGHT_PLATFORM_MONGO_STREAM_PASSWORD": secrets.token_urlsafe(24)}


def platform_environment() -> dict[str, str]:
    return {"FLIGHT_PLATFORM_DAGSTER_READ_ONLY": "true", **STREAM_PASSWORDS}


def first_error(action, timeout: float = 20) -> Exception:
    """The error `action` raises, calling it until it does (a consumer's first polls may return
    nothing before the broker's refusal arrives)."""
    errors = []

    def raised() -> bool:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - the test asserts which
            errors.append(error)
        return bool(errors)

    wait_until(raised, timeout, "the refusal", interval=0.1)
    return errors[0]


@contextlib.contextmanager
def reset_connection():
    """A client's socket whose peer accepted it and reset it at once, as a broker killed (or
    starting) at that moment does."""
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        peer, _ = server.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # no linger: a reset
        select.select([client], [], [], 5)  # until it arrives
        yield client


def test_a_connection_reset_before_tls_starts_is_a_kafka_connection_error(running_services):
    """kafka-python's metadata refresh loop survives Kafka's errors only (see KafkaTLSContext): with
    the clients' context, a reset before TLS starts is one; with the standard library's alone, it
    raises ConnectionResetError, which would end the loop."""
    config = connection(running_services, Role.STREAM)
    for context, raised in [(config["ssl_context"], KafkaConnectionError),
                            (tls_context(config), ConnectionResetError)]:
        with reset_connection() as sock, pytest.raises(raised, match="reset by peer"):
            context.wrap_socket(sock, server_hostname="127.0.0.1", do_handshake_on_connect=False)


def test_a_client_without_credentials_is_told_the_listener_wants_tls(running_services):
    open_client = load_settings({**os.environ, "FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    with pytest.raises(KafkaTimeoutError):  # all kafka-python says by itself
        create_producer(connection(open_client, Role.WEB), timeout_ms=2000)
    diagnosis = diagnose_role(open_client, Role.WEB)
    assert not diagnosis.ok
    assert "speaks TLS" in diagnosis.reason and "FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL" in diagnosis.reason


@pytest.mark.parametrize("variable, value", [("FLIGHT_PLATFORM_KAFKA_WEB_PASSWORD", "wrong-password-1"),
                                             ("FLIGHT_PLATFORM_KAFKA_WEB_USER", "intruder")])
def test_a_refused_login_names_the_user_and_setting_and_never_the_password(materialized, variable, value):
    refused = load_settings({**os.environ, variable: value})
    user = refused.kafka_security.logins[Role.WEB].user
    diagnosis = diagnose_role(refused, Role.WEB)
    assert not diagnosis.ok
    for named in (repr(user), "FLIGHT_PLATFORM_KAFKA_WEB_USER", "login was refused"):
        assert named in diagnosis.reason

    with pytest.raises(services.ServiceError) as start_up:  # make run's start-up check
        services.check_kafka_logins(refused)
    assert repr(user) in str(start_up.value)

    client = create_app(refused).test_client()
    health = client.get("/health")
    assert health.status_code == 503 and repr(user) in health.json["kafka"]["error"]
    published = client.post("/flights/delays/predict/classify_realtime", json={
        "DepDelay": 5.0, "Carrier": "DL", "FlightDate": "2013-12-23", "Dest": "ATL",
        "FlightNum": "1519", "Origin": "JFK"})
    assert published.status_code == 503 and repr(user) in published.get_data(as_text=True)
    for answer in (diagnosis.reason, str(start_up.value), health.get_data(as_text=True),
                   published.get_data(as_text=True)):
        assert "wrong-password-1" not in answer


def test_a_stream_run_refused_by_kafka_fails_naming_the_user(materialized, start_stream):
    stream = start_stream(kafka_stream_password="wrong-password-2")
    assert stream.process.wait(180) != 0
    log = stream.log()
    for named in ("'flight_stream'", "FLIGHT_PLATFORM_KAFKA_STREAM_USER", "login was refused"):
        assert named in log
    assert "wrong-password-2" not in log


def test_the_web_user_may_write_requests_and_nothing_else(running_services, settings):
    web = connection(settings, Role.WEB)
    in_group = KafkaConsumer(**web, group_id=settings.consumer_group, enable_auto_commit=False)
    in_group.subscribe([settings.request_topic])
    no_group = KafkaConsumer(**web, enable_auto_commit=False)
    no_group.assign([TopicPartition(settings.request_topic, 0)])
    other_topic = f"not_the_web_apps_{uuid.uuid4().hex[:8]}"
    kafka_access.ensure_topic(settings, other_topic, partitions=1)
    producer = create_producer(web)
    try:
        assert isinstance(first_error(lambda: in_group.poll(timeout_ms=200)), GroupAuthorizationFailedError)
        assert isinstance(first_error(lambda: no_group.poll(timeout_ms=200)), TopicAuthorizationFailedError)
        with pytest.raises(TopicAuthorizationFailedError, match=other_topic):
            producer.send(other_topic, b"{}").get(timeout=10)
        producer.send(settings.request_topic, b"{}", key=b"allowed").get(timeout=10)  # what it may do
    finally:
        for client in (in_group, no_group, producer):
            client.close()


def test_the_stream_user_may_not_write_requests(running_services, settings):
    producer = create_producer(connection(settings, Role.STREAM))
    try:
        with pytest.raises(KafkaError, match="AuthorizationFailed"):
            producer.send(settings.request_topic, b"{}").get(timeout=10)
    finally:
        producer.close()


def test_a_stream_in_another_group_fails_naming_the_user_and_the_group(running_services, settings):
    group = f"another_group_{uuid.uuid4().hex[:8]}"
    consumer = create_consumer(connection(settings, Role.STREAM), group, settings.request_topic,
                               settings.consumer_session_timeout_ms)
    with create_client(settings, Role.ADMIN) as mongo:
        worker = PredictionStreamWorker(consumer, scorer=None, model_version="none",
                                        database=mongo[settings.mongo_database],
                                        log=logging.getLogger(__name__))
        with pytest.raises(StreamDenied) as denied:
            worker.run(stop_requested=lambda: False)
    for named in ("'flight_stream'", group, "read", "GroupAuthorizationFailedError"):
        assert named in str(denied.value)


def test_a_user_without_acls_is_refused_by_the_authorizer(running_services, settings):
    """Fails if the broker allows what no ACL grants (`allow.everyone.if.no.acl.found=true`, or no
    authorizer at all): a logged-in user with no ACL writes nothing."""
    user, password = f"nobody_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    admin = kafka_access.admin_client(settings)
    try:
        mechanism = ScramMechanism[settings.kafka_security.sasl_mechanism.replace("-", "_")]
        assert admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, mechanism, password)]) == {user: None}
    finally:
        admin.close()
    nobody = {**connection(settings, Role.WEB), "sasl_plain_username": user, "sasl_plain_password": password}
    wait_until(lambda: diagnose(nobody, user).ok, 20, "the new user to log in")
    producer = create_producer(nobody)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(settings.request_topic, b"{}").get(timeout=10)
    finally:
        producer.close()


def test_the_stream_serves_end_to_end_on_an_open_broker(materialized, settings, start_stream, tmp_path):
    """FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT, the developer's opt-out: the local broker
    runs open and every client connects without a login."""
    environment = {**private_environment(tmp_path / "data"),
                   "FLIGHT_PLATFORM_MODEL_DIR": str(settings.model_dir),
                   "FLIGHT_PLATFORM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    opted_out = load_settings({**os.environ, **environment})
    kafka_and_mongo = [service for service in services.services(opted_out) if service.name != "spark"]
    services.start_all(kafka_and_mongo)
    try:
        assert "PLAINTEXT://" in (opted_out.services_dir / "kafka-1" / "server.properties").read_text()
        stream = start_stream(**{name.removeprefix("FLIGHT_PLATFORM_").lower(): value
                                 for name, value in environment.items()})
        stream.wait_for_log("Serving model", 180, "the stream to serve")
        producer = create_producer(connection(opted_out, Role.BATCH))
        rng = random.Random(7)
        requests = [PredictionRequest.create(Carrier="DL", FlightDate=f"2013-06-{rng.randint(1, 28):02d}",
                                             FlightNum="1519", Origin="JFK", Dest="ATL",
                                             DepDelay=float(rng.randint(-5, 60)), Distance=760.0)
                    for _ in range(50)]
        for request in requests:
            producer.send(opted_out.request_topic, request.to_message(), key=request.UUID.encode())
        ids = [request.UUID for request in requests]
        producer.flush()
        producer.close()
        with create_client(opted_out, Role.ADMIN) as mongo:
            wait_until(lambda: count_by_ids(mongo[opted_out.mongo_database][RESPONSES], ids) == len(ids),
                       120, "every request answered")
    finally:
        services.stop_all(kafka_and_mongo)


RESOURCES = """
query ($selector: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
    ... on ResourceDetailsList { results { name configuredValues { key value type } } }
  }
}"""
TERMINATE_RUN = """
mutation ($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on TerminateRunFailure { message } }
}"""


def dagster_url(platform) -> str:
    return f"http://127.0.0.1:{platform.settings.dagster_port}"


def test_the_read_only_ui_shows_the_stream_and_refuses_to_stop_it(platform):
    with platform.instance() as instance:
        run = serving_run(instance)
        result = graphql(dagster_url(platform), TERMINATE_RUN, runId=run.run_id)["terminateRun"]
        assert result == {"__typename": "TerminateRunFailure",
                          "message": "You do not have permission to terminate this run"}
        assert serving_run(instance).run_id == run.run_id


def test_the_ui_shows_where_passwords_come_from_never_their_values(platform):
    resources = {resource["name"]: {value["key"]: value for value in resource["configuredValues"]}
                 for resource in graphql(dagster_url(platform), RESOURCES, selector={
                     "repositoryLocationName": "flight_platform", "repositoryName": "__repository__"}
                 )["allTopLevelResourceDetailsOrError"]["results"]}
    assert resources["kafka"]["password"] == {"key": "password", "type": "ENV_VAR",
                                              "value": "FLIGHT_PLATFORM_KAFKA_STREAM_PASSWORD"}
    shown = repr(resources)
    for password in STREAM_PASSWORDS.values():
        assert password not in shown


def stored_files(root, skip) -> list:
    """The files under `root` and not under `skip`, SQLite's write-ahead logs and journals first: a
    log checkpointed away meanwhile has moved its pages into its database, read after it."""
    files = [path for path in root.rglob("*")
             if path.is_file() and not any(path.is_relative_to(skipped) for skipped in skip)]
    return sorted(files, key=lambda path: not path.name.endswith(("-wal", "-journal")))


def contents(path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # a log checkpointed into its database (searched after it)
        return b""


def test_no_password_is_in_a_log_the_run_storage_or_the_stacks_output(platform, settings, materialized):
    """Every file the session's materialization, its stream runs and this module's stack wrote
    (Dagster's run and event log storage, compute logs, the services' logs, the stack's output),
    searched for every password of both platforms and of the one whose run materialized."""
    with platform.instance() as instance:
        assert serving_run(instance) is not None  # the stack's stream has served
    passwords = set(STREAM_PASSWORDS.values())
    for secrets_dir in (settings.secrets_dir, materialized.secrets_dir, platform.settings.secrets_dir):
        passwords |= {path.read_text().strip() for path in secrets_dir.glob("*.password")}
    assert len(passwords) >= 10
    searched = [platform.log_dir / "stack.log"]
    for data in (settings, platform.settings):
        # The password files, and each Kafka node's own configuration (its login, owner-only).
        skip = [data.secrets_dir, *data.services_dir.glob("kafka-*/server.properties")]
        searched += stored_files(data.data_dir, skip)
    assert any("runs" in path.name for path in searched)  # Dagster's run storage is among them
    def found_in(paths) -> list[tuple[str, str]]:
        found = []
        for path in paths:  # each file read once, in the order above
            data = contents(path)
            found += [(str(path), password[:4]) for password in passwords if password.encode() in data]
        return found

    assert found_in(searched) == []
    # The search finds a password where one is kept on purpose: a node's own login.
    assert found_in(settings.services_dir.glob("kafka-*/server.properties"))
