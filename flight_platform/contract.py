"""The prediction request (a Kafka message) and response (a MongoDB document), written down once.

The web app builds requests with `PredictionRequest.create` and validates its form with
`parse_fields`; the streaming job parses messages with `PredictionRequest.from_message`, which
rejects anything off-contract with a reason naming every bad field. Field names are the wire names
of the book's JSON (UUID, Carrier, ...), hence the CamelCase attributes.
"""

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from flight_platform.features import ARRIVAL_DELAY_LABELS, date_features, route


class InvalidRequest(ValueError):
    pass


def _text(pattern: str, description: str) -> Callable[[Any], str]:
    compiled = re.compile(pattern)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"must be {description}, got {value!r}")
        return value

    return parse


def _number(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
        return float(value)

    return parse


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    return parse


def _date(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"must be a date as YYYY-MM-DD, got {value!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"is not a calendar date: {value!r}") from None
    return value


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"must be a UUID, got {value!r}") from None


def _timestamp(value: Any) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be an ISO 8601 timestamp, got {value!r}") from None
    return value


# One rule per field: parse(value) returns the value or raises ValueError saying what is wrong.
FIELD_RULES: dict[str, Callable[[Any], Any]] = {
    "UUID": _uuid,
    "Carrier": _text(r"[A-Z0-9]{2,3}", "a 2-3 character carrier code such as AA"),
    "FlightDate": _date,
    "FlightNum": _text(r"[0-9]{1,5}", "a flight number of 1-5 digits"),
    "Origin": _text(r"[A-Z]{3}", "a 3-letter airport code such as JFK"),
    "Dest": _text(r"[A-Z]{3}", "a 3-letter airport code such as JFK"),
    "DepDelay": _number(-1440, 2880),  # minutes; a day early to two days late
    "Distance": _number(1, 20000),  # miles
    "DayOfMonth": _integer(1, 31),
    "DayOfWeek": _integer(1, 7),
    "DayOfYear": _integer(1, 366),
    "Timestamp": _timestamp,
}


def parse_fields(raw: Mapping[str, Any], names: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate `names` of `raw`. Returns (parsed values, {field: what is wrong})."""
    values, errors = {}, {}
    for name in names:
        if raw.get(name) is None or raw.get(name) == "":
            errors[name] = "is required"
            continue
        try:
            values[name] = FIELD_RULES[name](raw[name])
        except ValueError as error:
            errors[name] = str(error)
    return values, errors


@dataclass(frozen=True)
class PredictionRequest:
    UUID: str
    Carrier: str
    FlightDate: str
    FlightNum: str
    Origin: str
    Dest: str
    DepDelay: float
    Distance: float
    DayOfMonth: int
    DayOfWeek: int
    DayOfYear: int
    Timestamp: str  # ISO 8601, UTC, when the request was made

    @classmethod
    def create(cls, *, Carrier: str, FlightDate: str, FlightNum: str, Origin: str, Dest: str,
               DepDelay: float, Distance: float) -> "PredictionRequest":
        """A new request: a fresh UUID, the date features from the shared feature code, and now."""
        return cls(UUID=str(uuid.uuid4()), Carrier=Carrier, FlightDate=FlightDate,
                   FlightNum=FlightNum, Origin=Origin, Dest=Dest, DepDelay=DepDelay,
                   Distance=Distance, **date_features(dt.date.fromisoformat(FlightDate)),
                   Timestamp=dt.datetime.now(dt.UTC).isoformat())

    @classmethod
    def from_message(cls, payload: bytes) -> "PredictionRequest":
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidRequest(f"not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise InvalidRequest(f"expected a JSON object, got {type(raw).__name__}")
        values, errors = parse_fields(raw, FIELD_RULES)
        if not errors:
            expected = date_features(dt.date.fromisoformat(values["FlightDate"]))
            errors = {name: f"is {values[name]} but FlightDate {values['FlightDate']} gives "
                            f"{value} (DayOfWeek: Monday=1)"
                      for name, value in expected.items() if values[name] != value}
        if errors:
            raise InvalidRequest("; ".join(f"{name} {problem}" for name, problem in errors.items()))
        return cls(**values)

    def to_message(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def model_input(self) -> dict[str, Any]:
        return {**asdict(self), "Route": route(self.Origin, self.Dest)}

    def response(self, probabilities: list[float], model_version: str,
                 scored_at: dt.datetime) -> dict[str, Any]:
        """The response document: the request, the predicted bucket and how sure the model is."""
        prediction = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {
            "_id": self.UUID,  # one document per request: see flight_platform.mongo
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "Timestamp"},
            "Route": route(self.Origin, self.Dest),
            "Prediction": prediction,
            "PredictionLabel": ARRIVAL_DELAY_LABELS[prediction],
            "Probabilities": [
                {"Bucket": bucket, "Label": label, "Probability": round(float(p), 6)}
                for bucket, (label, p) in enumerate(zip(ARRIVAL_DELAY_LABELS, probabilities, strict=True))],
            "ModelVersion": model_version,
            "RequestedAt": dt.datetime.fromisoformat(self.Timestamp),
            "ScoredAt": scored_at,
        }
