"""The prediction pages and JSON endpoints, at the book's paths so its curl examples work."""

import datetime as dt
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from pymongo.errors import PyMongoError

from flight_platform.clients.mongo import RESPONSES
from flight_platform.core.contract import (
    FlightQuery,
    InvalidRequest,
    PredictionRequest,
    canonical_uuid,
)
from web.clients import ServiceClients, ServiceUnavailable
from web.distances import get_flight_distance, known_routes

predictions = Blueprint("predictions", __name__)

FORM_FIELDS = list(FlightQuery.model_fields)
CODE_FIELDS = ["Carrier", "Origin", "Dest"]


def _clients() -> ServiceClients:
    return current_app.extensions["service_clients"]


def _error(status: int, errors: dict[str, str]):
    return {"status": "ERROR", "errors": errors}, status


@predictions.errorhandler(ServiceUnavailable)
def _service_unavailable(error: ServiceUnavailable):
    return {"status": "UNAVAILABLE", "reason": str(error)}, 503


@predictions.errorhandler(PyMongoError)
def _mongo_unavailable(error: PyMongoError):
    return {"status": "UNAVAILABLE",
            "reason": f"MongoDB is unreachable: {type(error).__name__}: {error}"}, 503


def _submitted_fields() -> dict[str, Any] | None:
    """Form fields or a JSON object, tidied the way a person types them: trimmed, codes upper-cased,
    a numeric DepDelay string read as a number. None if a JSON body is not an object."""
    if request.is_json:
        raw = request.get_json(silent=True)
        if not isinstance(raw, dict):
            return None
    else:
        raw = request.form.to_dict()
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
    return render_template("predict_kafka.html")


@predictions.post("/flights/delays/predict/classify_realtime")
def classify_realtime():
    fields = _submitted_fields()
    if fields is None:
        return _error(400, {"body": "must be a JSON object or form fields"})
    try:
        query = FlightQuery.from_fields(fields)
    except InvalidRequest as invalid:
        return _error(400, invalid.errors)

    clients = _clients()
    distance = get_flight_distance(clients.database, query.Origin, query.Dest)
    if distance is None:
        return _error(422, {"Dest": f"No flights from {query.Origin} to {query.Dest} in the "
                                    "data, so the route's distance is unknown."})
    prediction_request = PredictionRequest.create(**query.model_dump(), Distance=distance)
    clients.publish(prediction_request)
    return {"status": "OK", "id": prediction_request.UUID}


@predictions.get("/flights/delays/predict/classify_realtime/response/<request_id>")
def classify_realtime_response(request_id: str):
    try:
        request_id = canonical_uuid(request_id)
    except ValueError as error:
        return _error(400, {"id": str(error)})
    answer = _clients().database[RESPONSES].find_one({"_id": request_id}, {"_id": 0})
    if answer is None:
        return {"status": "WAIT", "id": request_id}
    prediction = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in answer.items()}
    return {"status": "OK", "id": request_id, "prediction": prediction}


@predictions.get("/flights/delays/routes")
def routes():
    return {"routes": known_routes(_clients().database)}


@predictions.get("/health")
def health():
    services = _clients().health()
    healthy = all(service["reachable"] for service in services.values())
    return {"status": "OK" if healthy else "UNAVAILABLE", **services}, 200 if healthy else 503
