"""The prediction pages and JSON endpoints, at the book's paths so its curl examples work."""

import datetime as dt
import json
import math
import time
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_limiter import RateLimitExceeded
from pymongo.errors import PyMongoError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from flight_platform.clients.mongo import RESPONSES
from flight_platform.core.contract import (
    FlightQuery,
    InvalidRequest,
    PredictionRequest,
    canonical_uuid,
    quote,
)
from flight_platform.core.model_store import ModelStore
from web import metrics, openapi
from web.answer_watch import MAX_WAIT_S
from web.clients import ServiceClients, ServiceUnavailable

predictions = Blueprint("predictions", __name__)

FORM_FIELDS = list(FlightQuery.model_fields)
CODE_FIELDS = ["Carrier", "Origin", "Dest"]


def _clients() -> ServiceClients:
    return current_app.extensions["service_clients"]


def _error(status: int, errors: dict[str, str], headers: dict[str, str] | None = None):
    return {"status": "ERROR", "errors": errors}, status, headers or {}


# Every error answer is JSON: registered app-wide, so unknown URLs and static files answer in JSON too.

@predictions.app_errorhandler(ServiceUnavailable)
def _service_unavailable(error: ServiceUnavailable):
    metrics.UNAVAILABLE.labels("kafka").inc()
    return {"status": "UNAVAILABLE", "reason": str(error)}, 503


@predictions.app_errorhandler(PyMongoError)
def _mongo_unavailable(error: PyMongoError):
    metrics.UNAVAILABLE.labels("mongo").inc()
    return {"status": "UNAVAILABLE",
            "reason": f"MongoDB is unreachable: {type(error).__name__}: {error}"}, 503


@predictions.app_errorhandler(404)
def _not_found(error):
    return _error(404, {"url": f"is not a page of this app: {quote(request.path)}"})


@predictions.app_errorhandler(405)
def _method_not_allowed(error: MethodNotAllowed):
    allowed = ", ".join(sorted(error.valid_methods or []))
    return _error(405, {"method": f"must be one of {allowed} here"}, {"Allow": allowed})


@predictions.app_errorhandler(413)
def _too_large(error):
    return _error(413, {"body": f"is larger than the limit of {request.max_content_length:,} bytes"})


@predictions.app_errorhandler(RateLimitExceeded)
def _rate_limited(error: RateLimitExceeded):
    # When the oldest request in the client's window leaves it, one more is allowed.
    reset_at = current_app.extensions["rate_limiter"].current_limit.reset_at
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return _error(429, {"rate": f"is over this client's limit of {error.limit.limit}: try again in "
                                f"{retry_after} s"}, {"Retry-After": str(retry_after)})


@predictions.app_errorhandler(500)
def _server_error(error):
    # Flask has already logged the exception with its traceback; the answer shows none of it.
    return _error(500, {"server": "failed unexpectedly; the error is logged"})


@predictions.app_errorhandler(HTTPException)
def _other_http_error(error: HTTPException):
    """Any other HTTP error, such as a static file's 416 for a Range past its end."""
    return _error(error.code, {"request": error.description})


def _json_object() -> dict[str, Any]:
    """The JSON body, parsed here rather than by Flask's get_json, which lets the RecursionError of
    a deeply nested body escape as a 500."""
    try:
        body = json.loads(request.get_data())
    except ValueError as error:  # UnicodeDecodeError too; the messages quote at most a byte
        raise InvalidRequest({"body": f"is not valid JSON: {error}"}) from None
    except RecursionError:
        raise InvalidRequest({"body": "is nested too deeply"}) from None
    if not isinstance(body, dict):
        raise InvalidRequest({"body": "must be a JSON object or form fields"})
    return body


def _submitted_fields() -> dict[str, Any]:
    """Form fields or a JSON object, tidied the way a person types them: trimmed, codes upper-cased,
    a numeric DepDelay string read as a number. Raises InvalidRequest for a body that is neither."""
    raw = _json_object() if request.is_json else request.form.to_dict()
    fields = {name: raw.get(name) for name in FORM_FIELDS}
    for name, value in fields.items():
        if isinstance(value, str):
            fields[name] = value.strip().upper() if name in CODE_FIELDS else value.strip()
    if isinstance(fields["FlightNum"], int) and not isinstance(fields["FlightNum"], bool):
        fields["FlightNum"] = str(fields["FlightNum"])
    if isinstance(fields["DepDelay"], str):
        try:
            fields["DepDelay"] = float(fields["DepDelay"])
        except ValueError:
            pass  # left as typed, so the rule's message shows what was wrong
    return fields


@predictions.get("/")
def index():
    return redirect(url_for("predictions.predict_kafka"))


@predictions.get("/flights/delays/predict_kafka")
def predict_kafka():
    return render_template("predict_kafka.html", champion=_champion())


def _champion() -> dict | None:
    """Since when and why the champion serves (the model store's history); None before the first
    model, or when the store is not reachable from the web app."""
    store = ModelStore(_clients().settings.model_store_dir)
    try:
        champions = store.champions()
    except OSError:
        return None
    latest = champions[-1] if champions else None
    return latest if latest and latest["version"] == store.current_version() else None


@predictions.post("/flights/delays/predict/classify_realtime")
def classify_realtime():
    try:
        query = FlightQuery.from_fields(_submitted_fields())
    except InvalidRequest as invalid:
        return _error(400, invalid.errors)

    clients = _clients()
    distance = clients.route_table.distance(query.Origin, query.Dest)
    if distance is None:
        return _error(422, {"Dest": f"No flights from {query.Origin} to {query.Dest} in the "
                                    "data, so the route's distance is unknown."})
    prediction_request = PredictionRequest.create(**query.model_dump(), Distance=distance)
    with metrics.PUBLISH_SECONDS.time():
        clients.publish(prediction_request)
    return {"status": "OK", "id": prediction_request.UUID}


def _wait_seconds() -> float:
    """The `wait` query parameter: how long the caller will wait for the answer, capped."""
    raw = request.args.get("wait", "0")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:
        raise InvalidRequest({"wait": f"must be a number of seconds, 0 or more, got {quote(raw)}"})
    return min(seconds, MAX_WAIT_S)


@predictions.get("/flights/delays/predict/classify_realtime/response/<request_id>")
def classify_realtime_response(request_id: str):
    """The answer, or WAIT. With `?wait=` seconds the request is held until the answer is stored
    (long polling); without, it answers at once, as the book's page expects."""
    try:
        request_id = canonical_uuid(request_id)
    except ValueError as error:
        return _error(400, {"id": str(error)})
    try:
        wait_s = _wait_seconds()
    except InvalidRequest as invalid:
        return _error(400, invalid.errors)
    clients = _clients()
    answer = clients.database[RESPONSES].find_one({"_id": request_id})
    if answer is None and wait_s > 0:
        with metrics.long_poll() as outcome:
            answer = clients.answer_watch.wait(request_id, wait_s)
            outcome["answered"] = answer is not None
    if answer is None:
        return {"status": "WAIT", "id": request_id}
    prediction = {k: v.isoformat() if isinstance(v, dt.datetime) else v
                  for k, v in answer.items() if k != "_id"}
    return {"status": "OK", "id": request_id, "prediction": prediction}


@predictions.get("/flights/delays/routes")
def routes():
    return {"routes": _clients().route_table.routes()}


@predictions.get("/openapi.json")
def openapi_document():
    return openapi.document()


@predictions.get("/health")
def health():
    services = _clients().health()
    healthy = all(service["reachable"] for service in services.values())
    for name, service in services.items():
        if not service["reachable"]:
            metrics.UNAVAILABLE.labels(name).inc()
    return {"status": "OK" if healthy else "UNAVAILABLE", **services}, 200 if healthy else 503
