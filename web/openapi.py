"""The web app's JSON endpoints as an OpenAPI 3.1 document, generated from the contract's pydantic
models and the answer shapes below. The app serves it at /openapi.json; `python -m web.openapi`
rewrites `web/openapi.json` for HTTP client generators, a test keeps that file current, and
schemathesis checks the live app against the document."""

import functools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from flight_platform.core.contract import FlightQuery, PredictionResponse
from web.answer_watch import MAX_WAIT_S

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
SCHEMAS = "#/components/schemas/{model}"
PREDICT = "/flights/delays/predict/classify_realtime"


class Accepted(BaseModel):
    """The request is on the Kafka topic (acknowledged by every in-sync replica)."""
    status: Literal["OK"]
    id: str = Field(description="The request's UUID: ask for its answer with it")


class Failed(BaseModel):
    """The request was refused; nothing was published."""
    status: Literal["ERROR"]
    errors: dict[str, str] = Field(
        description="A sentence per problem, by the field (or body, id, wait, url, method, rate) it is in")


class Unavailable(BaseModel):
    """Kafka or MongoDB could not be reached; try again."""
    status: Literal["UNAVAILABLE"]
    reason: str


class Waiting(BaseModel):
    """No answer yet: the streaming job has not scored the request."""
    status: Literal["WAIT"]
    id: str


class Answered(BaseModel):
    status: Literal["OK"]
    id: str
    prediction: dict[str, Any] = Field(description="The stored answer (schema Prediction)")


class Route(BaseModel):
    Origin: str
    Dest: str
    Distance: float
    Carriers: list[str]


class Routes(BaseModel):
    routes: list[Route] = Field(description="Every route the data holds, for the form's suggestions")


class KafkaHealth(BaseModel):
    reachable: bool
    bootstrap_servers: str


class MongoHealth(BaseModel):
    reachable: bool
    database: str
    error: str | None = Field(default=None, description="Why it is not reachable (a refused login "
                              "names the user and the settings giving it; never a password)")


class Health(BaseModel):
    status: Literal["OK", "UNAVAILABLE"]
    kafka: KafkaHealth
    mongo: MongoHealth


def _served_prediction(response: dict[str, Any]) -> dict[str, Any]:
    """The stored answer as the endpoint serves it: without MongoDB's `_id` (the id is beside it)."""
    return {**response, "title": "Prediction",
            "properties": {k: v for k, v in response["properties"].items() if k != "_id"},
            "required": [name for name in response["required"] if name != "_id"]}


def _answer(description: str, *models: str) -> dict[str, Any]:
    refs = [{"$ref": SCHEMAS.format(model=model)} for model in models]
    return {"description": description,
            "content": {"application/json": {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}}}


REFUSED = _answer("A field is malformed or missing", "Failed")
UNAVAILABLE = _answer("Kafka or MongoDB is unreachable", "Unavailable")
RATE_LIMITED = {**_answer("This client sent more POSTs than the limit (FLIGHT_PLATFORM_WEB_RATE_LIMIT)",
                          "Failed"),
                "headers": {"Retry-After": {"description": "Seconds until one more is allowed",
                                            "required": True, "schema": {"type": "integer", "minimum": 1}}}}


@functools.cache  # served as is: built once per process
def document() -> dict[str, Any]:
    models = [FlightQuery, PredictionResponse, Accepted, Failed, Unavailable, Waiting, Answered,
              Routes, Health]
    _, definitions = models_json_schema([(model, "serialization") for model in models],
                                        ref_template=SCHEMAS)
    schemas = definitions["$defs"]
    schemas["Prediction"] = _served_prediction(schemas.pop("PredictionResponse"))
    schemas["Answered"]["properties"]["prediction"] = {"$ref": SCHEMAS.format(model="Prediction")}
    query = {"$ref": SCHEMAS.format(model="FlightQuery")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "flight_platform prediction API", "version": "1",
                 "description": "Ask for a flight's arrival delay, then get the streaming job's "
                                "answer. The paths are those of Agile Data Science 2.0."},
        "paths": {
            PREDICT: {"post": {
                "operationId": "requestPrediction",
                "summary": "Ask for a prediction; answers once Kafka has acknowledged the request",
                "requestBody": {"required": True, "content": {
                    media: {"schema": query} for media in
                    ["application/x-www-form-urlencoded", "multipart/form-data", "application/json"]}},
                "responses": {
                    "200": _answer("Accepted: the request is on the topic", "Accepted"),
                    "400": REFUSED,
                    "413": _answer("The body is over the size limit", "Failed"),
                    "422": _answer("No flights on this route in the data", "Failed"),
                    "429": RATE_LIMITED,
                    "503": UNAVAILABLE}}},
            PREDICT + "/response/{request_id}": {"get": {
                "operationId": "getPrediction",
                "summary": "The answer to a request, or WAIT",
                "parameters": [
                    {"name": "request_id", "in": "path", "required": True,
                     "schema": {"type": "string", "format": "uuid"}},
                    {"name": "wait", "in": "query", "required": False,
                     "description": "Seconds to hold the request until the answer is stored (long "
                                    f"polling), at most {MAX_WAIT_S}; 0 answers at once",
                     "schema": {"type": "number", "minimum": 0, "default": 0}}],
                "responses": {
                    "200": _answer("The answer, or WAIT if it is not stored yet (after `wait`)",
                                   "Answered", "Waiting"),
                    "400": REFUSED,
                    "503": UNAVAILABLE}}},
            "/flights/delays/routes": {"get": {
                "operationId": "listRoutes",
                "summary": "The known routes and their carriers",
                "responses": {"200": _answer("The routes", "Routes"), "503": UNAVAILABLE}}},
            "/health": {"get": {
                "operationId": "health",
                "summary": "Whether Kafka and MongoDB are reachable",
                "responses": {"200": _answer("Both are reachable", "Health"),
                              "503": _answer("One is not", "Health")}}},
        },
        "components": {"schemas": schemas},
    }


def write_document(path: Path = DOCUMENT_PATH) -> Path:
    path.write_text(json.dumps(document(), indent=2, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_document()}")
