"""The prediction request (a Kafka message) and response (a MongoDB document), written down once.

Pydantic models in strict mode: a "5" string is not a number and 1.0 is not a day of the month,
on the wire as in the form. The web app validates what a person typed as a `FlightQuery` and
publishes a `PredictionRequest`; the streaming job parses each message with
`PredictionRequest.from_message`, one pass from bytes. Anything off-contract raises
`InvalidRequest`, whose `errors` name every bad field with a sentence (the web app's 400 body, the
dead letter's reason). Field names are the wire names of the book's JSON (UUID, Carrier, ...).

The JSON Schema of both documents is generated from these models into `schemas/`:
`python -m flight_platform.core.contract` rewrites it, and a test keeps it current.
"""

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np
from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from flight_platform.core.features import ARRIVAL_DELAY_LABELS, date_features, route

SCHEMA_DIR = Path(__file__).parent / "schemas"
QUOTE_CHARS = 40  # an error quotes at most this much of a bad value
# A valid request is about 400 bytes; anything near this is not one, and is refused unparsed.
MAX_MESSAGE_BYTES = 64 * 1024


def quote(value: Any) -> str:
    """A short, printable piece of a bad value for an error message: never the whole of a huge one."""
    if isinstance(value, (str, bytes)) and len(value) > QUOTE_CHARS:
        return f"{value[:QUOTE_CHARS]!r}... ({len(value):,} characters)"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, int) and value.bit_length() > 128:  # repr refuses over 4,300 digits
        return f"a whole number of about {int(value.bit_length() * 0.30103):,} digits"
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text):,} characters)"


class InvalidRequest(ValueError):
    """Off-contract input; `errors` maps each bad field (or "body") to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{name} {problem}" for name, problem in errors.items()))


def _calendar_date(value: str) -> str:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"is not a calendar date: {quote(value)}") from None
    return value


def _timestamp(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be an ISO 8601 timestamp, got {quote(value)}") from None
    return value


def canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"must be a UUID, got {quote(value)}") from None


def _code(pattern: str, description: str, example: str) -> Any:
    return Annotated[str, StringConstraints(pattern=pattern),
                     Field(description=description, examples=[example])]


AirportCode = _code(r"^[A-Z]{3}$", "a 3-letter airport code such as JFK", "JFK")

# What each constrained string must be, in the words of the error messages.
_EXPECTED = {
    "UUID": "a UUID",
    "Carrier": "a 2-3 character carrier code such as AA",
    "FlightDate": "a date as YYYY-MM-DD",
    "FlightNum": "a flight number of 1-5 digits",
    "Origin": "a 3-letter airport code such as JFK",
    "Dest": "a 3-letter airport code such as JFK",
    "Timestamp": "an ISO 8601 timestamp",
}
_NUMBER_ERRORS = {"float_type", "finite_number", "float_parsing"}


class FlightQuery(BaseModel):
    """What a person asks about: the fields of the book's form."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore",
                              field_title_generator=lambda name, _info: name)

    Carrier: _code(r"^[A-Z0-9]{2,3}$", _EXPECTED["Carrier"], "DL")
    FlightDate: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
                          AfterValidator(_calendar_date),
                          Field(description="The flight's date, YYYY-MM-DD", examples=["2013-12-23"],
                                json_schema_extra={"format": "date"})]
    FlightNum: _code(r"^[0-9]{1,5}$", _EXPECTED["FlightNum"], "1519")
    Origin: AirportCode
    Dest: AirportCode
    DepDelay: float = Field(ge=-1440, le=2880, allow_inf_nan=False,
                            description="Departure delay in minutes; a day early to two days late")

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "FlightQuery":
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            raise InvalidRequest(_problems(cls, error)) from None


class RequestedFlight(FlightQuery):
    """The query as the model sees it: its identity, the route's distance and the date features.
    Shared by the request and the response."""

    UUID: Annotated[str, AfterValidator(canonical_uuid), Field(description="The request's id")]
    Distance: float = Field(ge=1, le=20000, allow_inf_nan=False, description="Route distance, miles")
    DayOfMonth: int = Field(ge=1, le=31)
    DayOfWeek: int = Field(ge=1, le=7, description="ISO weekday of FlightDate, Monday=1")
    DayOfYear: int = Field(ge=1, le=366)

    @model_validator(mode="after")
    def _date_features_match_flight_date(self):
        expected = date_features(dt.date.fromisoformat(self.FlightDate))
        mismatches = {name: f"is {getattr(self, name)} but FlightDate {self.FlightDate} gives {value} "
                            f"(DayOfWeek: Monday=1)"
                      for name, value in expected.items() if getattr(self, name) != value}
        if mismatches:
            raise PydanticCustomError("date_features_mismatch", "date features disagree with "
                                      "FlightDate", {"mismatches": mismatches})
        return self


class PredictionRequest(RequestedFlight):
    """A prediction request: one message on the Kafka request topic."""

    Timestamp: Annotated[str, AfterValidator(_timestamp),
                         Field(description="When the request was made, ISO 8601 in UTC")]

    @classmethod
    def create(cls, *, Distance: float, **query: Any) -> "PredictionRequest":
        """A new request for the `FlightQuery` fields `query` and the route's `Distance`: a fresh
        UUID, the date features from the shared feature code, and now. Validated like a message,
        so nothing off-contract is ever published."""
        return cls.model_validate({
            "UUID": str(uuid.uuid4()), **query, "Distance": Distance,
            **date_features(dt.date.fromisoformat(query["FlightDate"])),
            "Timestamp": dt.datetime.now(dt.UTC).isoformat()})

    @classmethod
    def from_message(cls, payload: bytes | None,
                     max_bytes: int = MAX_MESSAGE_BYTES) -> "PredictionRequest":
        """Parse a Kafka message in one pass from its bytes. Whatever the bytes are, the result is
        a valid request or InvalidRequest: one hostile message must never stop a consumer."""
        if payload is None:
            raise InvalidRequest({"body": "is missing (a null message)"})
        if len(payload) > max_bytes:
            raise InvalidRequest({"body": f"is {len(payload):,} bytes, over the limit of "
                                          f"{max_bytes:,}: not parsed"})
        try:
            try:
                return cls.model_validate_json(payload)
            except ValidationError as error:
                problems = _problems(cls, error)
        except Exception as error:  # noqa: BLE001 - e.g. MemoryError; a reason, never a crash
            problems = {"body": f"could not be parsed: {type(error).__name__}: {quote(str(error))}"}
        raise InvalidRequest(problems)

    def to_message(self) -> bytes:
        return self.model_dump_json().encode()

    def model_input(self) -> dict[str, Any]:
        return {**self.__dict__, "Route": route(self.Origin, self.Dest)}

    def response(self, champion: "Scored", model_version: str, scored_at: dt.datetime,
                 shadow: Sequence[tuple[str, "Scored"]] = ()) -> dict[str, Any]:
        """The response document (a `PredictionResponse` by alias): the request, the champion's
        predicted bucket, how sure it is and why, and each challenger's (`shadow`: version,
        scored). Built without validating again what is already checked."""
        fields = self.__dict__
        return {
            "_id": self.UUID,  # one document per request: see flight_platform.clients.mongo
            **{name: fields[name] for name in RequestedFlight.model_fields},
            "Route": route(self.Origin, self.Dest),
            **_prediction(champion),
            "ModelVersion": model_version,
            "Shadow": [{"ModelVersion": version, **_prediction(scored)} for version, scored in shadow],
            "RequestedAt": dt.datetime.fromisoformat(self.Timestamp),
            "ScoredAt": scored_at,
        }


class Scored(NamedTuple):
    """One model's answer to one request: every bucket's probability, and why (an `Explanation`
    document from `explanation_documents`, or None when answers are not explained)."""

    probabilities: list[float]
    explanation: dict[str, Any] | None = None


def _prediction(scored: Scored) -> dict[str, Any]:
    """The predicted bucket, its label, every bucket's probability and the explanation, as the
    documents hold them."""
    probabilities = scored.probabilities
    prediction = max(range(len(probabilities)), key=probabilities.__getitem__)
    document = {
        "Prediction": prediction,
        "PredictionLabel": ARRIVAL_DELAY_LABELS[prediction],
        "Probabilities": [
            {"Bucket": bucket, "Label": label, "Probability": round(float(p), 6)}
            for bucket, (label, p) in enumerate(zip(ARRIVAL_DELAY_LABELS, probabilities, strict=True))],
    }
    if scored.explanation is not None:
        document["Explanation"] = scored.explanation
    return document


def explanation_documents(features: list[str], base_rates: np.ndarray, contributions: np.ndarray,
                          probabilities: np.ndarray) -> list[dict[str, Any]]:
    """Each row's `Explanation` document, from a scorer's base rates (by bucket) and contributions
    (row, feature, bucket) for rows with these `probabilities`; rounded to 6 decimals like them.
    Arrays in one order per row rather than an object per input: the stream builds one document
    per answer, and these cost a fraction of the per-object form to build and to store."""
    predicted = probabilities.argmax(axis=1)  # the first likeliest, as _prediction picks it
    rounded = np.round(contributions, 6)
    toward_predicted = rounded[np.arange(len(rounded)), :, predicted]
    largest_first = np.argsort(-np.abs(toward_predicted), axis=1, kind="stable")
    names = np.asarray(features, dtype=object)[largest_first].tolist()
    toward = np.take_along_axis(toward_predicted, largest_first, axis=1).tolist()
    by_bucket = np.take_along_axis(rounded, largest_first[:, :, np.newaxis], axis=1).tolist()
    base = np.round(base_rates, 6).tolist()
    return [{"BaseProbability": base[bucket], "Features": row_names, "Contributions": row_toward,
             "BaseProbabilities": base, "ContributionsByBucket": row_by_bucket}
            for bucket, row_names, row_toward, row_by_bucket
            in zip(predicted.tolist(), names, toward, by_bucket, strict=True)]


class BucketProbability(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    Bucket: int = Field(ge=0, lt=len(ARRIVAL_DELAY_LABELS))
    Label: str
    Probability: float = Field(ge=0, le=1)


class AnswerExplanation(BaseModel):
    """Why a model gave its answer: the random forest's probabilities decomposed along its decision
    paths. BaseProbability + the sum of Contributions = the predicted bucket's probability (to the
    rounding of 6 decimals); likewise for every bucket with BaseProbabilities and
    ContributionsByBucket. What the model associates with a value, not what causes a delay."""

    model_config = ConfigDict(strict=True, frozen=True)

    BaseProbability: float = Field(ge=0, le=1, description="The predicted bucket's share of the "
                                   "training rows: the forest's answer before any split")
    Features: list[str] = Field(
        description="Every model input, named as in the request (Route: Origin-Dest), by the size "
        "of its contribution to the predicted bucket, largest first")
    Contributions: list[Annotated[float, Field(ge=-1, le=1)]] = Field(
        description="What each input's value added to the predicted bucket's probability "
        "(negative: took away), in the order of Features")
    BaseProbabilities: list[float] = Field(
        min_length=len(ARRIVAL_DELAY_LABELS), max_length=len(ARRIVAL_DELAY_LABELS),
        description="Every bucket's base probability, by bucket")
    ContributionsByBucket: list[list[float]] = Field(
        description="Each input's contribution to every bucket (by bucket), in the order of Features")

    @model_validator(mode="after")
    def _one_contribution_per_feature(self):
        if not len(self.Features) == len(self.Contributions) == len(self.ContributionsByBucket):
            raise ValueError("Features, Contributions and ContributionsByBucket differ in length")
        return self


def _explanation_field() -> Any:
    return Field(default=None, description="Why this answer (answers stored before explanations "
                 "existed, or with FLIGHT_PLATFORM_EXPLAIN_ANSWERS off, have none)")


class ShadowPrediction(BaseModel):
    """A challenger's prediction for the same request: recorded, never served."""

    model_config = ConfigDict(strict=True, frozen=True)

    ModelVersion: str
    Prediction: int = Field(ge=0, lt=len(ARRIVAL_DELAY_LABELS))
    PredictionLabel: str
    Probabilities: list[BucketProbability]
    Explanation: AnswerExplanation | None = _explanation_field()


class PredictionResponse(RequestedFlight):
    """The MongoDB document of an answer, keyed by the request's UUID."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id", description="The request's UUID: one answer per request")
    Route: str
    Prediction: int = Field(ge=0, lt=len(ARRIVAL_DELAY_LABELS), description="The likeliest bucket")
    PredictionLabel: str
    Probabilities: list[BucketProbability]
    ModelVersion: str = Field(description="The model version that produced this answer: the champion")
    Explanation: AnswerExplanation | None = _explanation_field()
    Shadow: list[ShadowPrediction] = Field(
        default=[], description="The challengers' predictions for the same request (answers stored "
        "before challengers existed have none)")
    RequestedAt: dt.datetime
    ScoredAt: dt.datetime


def _bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    metadata = model.model_fields[name].metadata
    low = next(m.ge for m in metadata if isinstance(m, Ge))
    high = next(m.le for m in metadata if isinstance(m, Le))
    return low, high


def _problem(model: type[BaseModel], name: str, error: ErrorDetails) -> str:
    """One field's error as a sentence, quoting at most a short piece of the bad value."""
    kind, value = error["type"], error.get("input")
    if kind == "missing" or value is None or value == "":
        return "is required"
    if kind == "value_error":  # raised by our own validators, already a sentence
        return str(error["ctx"]["error"])
    annotation = model.model_fields[name].annotation
    if annotation is float:
        if kind in _NUMBER_ERRORS:
            return f"must be a number, got {quote(value)}"
        low, high = _bounds(model, name)
        return f"must be between {low:g} and {high:g}, got {quote(value)}"
    if annotation is int:
        low, high = _bounds(model, name)
        return f"must be a whole number from {low} to {high}, got {quote(value)}"
    return f"must be {_EXPECTED.get(name, 'a string')}, got {quote(value)}"


def _problems(model: type[BaseModel], error: ValidationError) -> dict[str, str]:
    problems: dict[str, str] = {}
    for detail in error.errors(include_url=False):
        kind, location = detail["type"], detail["loc"]
        if kind == "json_invalid":
            problems["body"] = f"is not valid JSON: {detail['ctx']['error']}"
        elif kind == "model_type":
            problems["body"] = f"must be a JSON object, got {type(detail['input']).__name__}"
        elif kind == "date_features_mismatch":
            problems.update(detail["ctx"]["mismatches"])
        elif location and location[0] in model.model_fields:
            problems.setdefault(str(location[0]), _problem(model, str(location[0]), detail))
        else:
            problems["body"] = detail["msg"]
    return problems


def json_schemas() -> dict[str, dict]:
    """The published JSON Schemas, by file name."""
    return {
        "prediction_request.schema.json": PredictionRequest.model_json_schema(),
        "prediction_response.schema.json": PredictionResponse.model_json_schema(by_alias=True),
    }


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_json_schemas():
        print(f"wrote {path}")
