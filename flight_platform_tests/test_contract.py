import datetime as dt
import json

import numpy as np
import pytest
from pydantic import ValidationError

from flight_platform.core.contract import (
    SCHEMA_DIR,
    FlightQuery,
    InvalidRequest,
    PredictionRequest,
    PredictionResponse,
    Scored,
    explanation_documents,
    json_schemas,
)


def valid_message(**overrides) -> dict:
    message = {
        "UUID": "0b4f6a0c-7a47-4d0e-9f0a-6a8e4a0c1f00", "Carrier": "DL", "FlightDate": "2013-01-01",
        "FlightNum": "1519", "Origin": "JFK", "Dest": "ATL", "DepDelay": 5.0, "Distance": 760.0,
        "DayOfMonth": 1, "DayOfWeek": 2, "DayOfYear": 1, "Timestamp": "2026-11-25T10:00:00+00:00",
    }
    message.update(overrides)
    return message


def parse(message) -> PredictionRequest:
    return PredictionRequest.from_message(json.dumps(message).encode())


def test_create_derives_date_features_with_the_training_convention():
    request = PredictionRequest.create(Carrier="DL", FlightDate="2016-12-25", FlightNum="1519",
                                       Origin="JFK", Dest="ATL", DepDelay=5.0, Distance=760.0)
    assert (request.DayOfMonth, request.DayOfWeek, request.DayOfYear) == (25, 7, 360)
    assert dt.datetime.fromisoformat(request.Timestamp).tzinfo is not None
    assert PredictionRequest.from_message(request.to_message()) == request


def test_valid_message():
    request = parse(valid_message())
    assert request.Carrier == "DL" and request.DepDelay == 5.0
    assert request.model_input()["Route"] == "JFK-ATL"


def test_integer_delay_is_a_number():
    assert parse(valid_message(DepDelay=5)).DepDelay == 5.0


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "body must be a JSON object, got list"),
])
def test_unparseable_messages(payload, reason):
    with pytest.raises(InvalidRequest, match=reason):
        PredictionRequest.from_message(payload)


@pytest.mark.parametrize("overrides, reason", [
    ({"Origin": None}, "Origin is required"),
    ({"DepDelay": "5"}, "DepDelay must be a number, got '5'"),
    ({"DepDelay": True}, "DepDelay must be a number"),
    ({"DepDelay": 99999}, "DepDelay must be between"),
    ({"Carrier": 7}, "Carrier must be a 2-3 character carrier code"),
    ({"Origin": "jfk"}, "Origin must be a 3-letter airport code"),
    ({"FlightDate": "2013-02-30"}, "FlightDate is not a calendar date"),
    ({"FlightDate": "01/01/2013"}, "FlightDate must be a date as YYYY-MM-DD"),
    ({"UUID": "42"}, "UUID must be a UUID"),
    ({"DayOfWeek": 1.0}, "DayOfWeek must be a whole number from 1 to 7"),
    # Monday=0 (Python's weekday()) is the classic train/serve mismatch.
    ({"DayOfWeek": 1}, "DayOfWeek is 1 but FlightDate 2013-01-01 gives 2"),
    ({"Timestamp": "yesterday"}, "Timestamp must be an ISO 8601 timestamp"),
])
def test_off_contract_fields_are_named(overrides, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse(valid_message(**overrides))


def test_every_bad_field_is_reported():
    with pytest.raises(InvalidRequest) as error:
        parse(valid_message(Carrier="", Dest="atlanta", DepDelay="late"))
    assert str(error.value).count(";") == 2


def test_a_query_names_every_missing_or_bad_field():
    with pytest.raises(InvalidRequest) as error:
        FlightQuery.from_fields({"Origin": "JFK", "Dest": "", "DepDelay": 3, "Carrier": "DL",
                                 "FlightNum": 15})
    assert error.value.errors == {"FlightDate": "is required", "FlightNum": "must be a flight number "
                                  "of 1-5 digits, got 15", "Dest": "is required"}


def test_a_valid_query_reads_an_integer_delay_as_a_number():
    query = FlightQuery.from_fields({"Origin": "JFK", "Dest": "ATL", "DepDelay": 3, "Carrier": "DL",
                                     "FlightNum": "15", "FlightDate": "2013-01-01"})
    assert query.DepDelay == 3.0 and isinstance(query.DepDelay, float)


def test_response_document():
    request = parse(valid_message())
    scored_at = dt.datetime(2026, 11, 25, 10, 0, 1, tzinfo=dt.UTC)
    document = request.response(Scored([0.1, 0.2, 0.6, 0.1]), "v1", scored_at)
    assert document["Prediction"] == 2
    assert document["PredictionLabel"] == "Slightly late (0–30 min)"
    assert [p["Probability"] for p in document["Probabilities"]] == [0.1, 0.2, 0.6, 0.1]
    assert document["ModelVersion"] == "v1"
    assert document["Route"] == "JFK-ATL" and document["UUID"] == document["_id"] == request.UUID
    assert document["RequestedAt"] == dt.datetime(2026, 11, 25, 10, tzinfo=dt.UTC)
    assert document["ScoredAt"] == scored_at
    assert document["Shadow"] == []


def test_challengers_predictions_are_recorded_beside_the_champions():
    document = parse(valid_message()).response(
        Scored([0.1, 0.2, 0.6, 0.1]), "v1", dt.datetime.now(dt.UTC),
        shadow=[("v2", Scored([0.7, 0.1, 0.1, 0.1])), ("v3", Scored([0.1, 0.1, 0.1, 0.7]))])
    assert document["Prediction"] == 2 and document["ModelVersion"] == "v1"
    assert [(s["ModelVersion"], s["Prediction"], s["PredictionLabel"]) for s in document["Shadow"]] == [
        ("v2", 0, "Early (15+ min)"), ("v3", 3, "Very late (30+ min)")]
    assert [p["Probability"] for p in document["Shadow"][0]["Probabilities"]] == [0.7, 0.1, 0.1, 0.1]
    assert len(PredictionResponse.model_validate(document).Shadow) == 2


def test_a_stored_answer_is_a_valid_response_document():
    document = parse(valid_message()).response(Scored([0.1, 0.2, 0.6, 0.1]), "v1", dt.datetime.now(dt.UTC))
    assert PredictionResponse.model_validate(document).id == document["UUID"]
    del document["Shadow"]  # stored before challengers existed
    assert PredictionResponse.model_validate(document).Shadow == []


def test_an_explained_answer_names_its_inputs_largest_first_and_adds_up():
    features = ["DepDelay", "Carrier", "Route"]
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    base_rates = np.array([0.25, 0.25, 0.25, 0.25])
    contributions = np.array([  # row, feature, bucket: each row adds up to its probabilities
        [[-0.1, -0.05, 0.0, 0.2], [0.0, 0.0, 0.05, -0.1], [-0.05, 0.0, 0.0, 0.05]],
        [[0.4, -0.1, -0.1, -0.2], [0.05, -0.05, 0.0, 0.0], [0.0, 0.0, -0.05, 0.05]]])
    first, second = (Scored(p, e) for p, e in zip(probabilities.tolist(), explanation_documents(
        features, base_rates, contributions, probabilities), strict=True))

    document = parse(valid_message()).response(first, "v1", dt.datetime.now(dt.UTC),
                                                shadow=[("v2", second)])
    explanation = PredictionResponse.model_validate(document).Explanation
    assert document["Prediction"] == 3 and explanation.BaseProbability == 0.25
    assert explanation.Features == ["DepDelay", "Carrier", "Route"]
    assert explanation.Contributions == [0.2, -0.1, 0.05]
    assert explanation.ContributionsByBucket[1] == [0.0, 0.0, 0.05, -0.1]  # Carrier's
    for bucket, probability in enumerate(probabilities[0]):
        assert explanation.BaseProbabilities[bucket] + sum(
            values[bucket] for values in explanation.ContributionsByBucket) == pytest.approx(
            probability, abs=1e-9)
    shadow = document["Shadow"][0]["Explanation"]
    assert shadow["BaseProbability"] == 0.25
    assert shadow["Features"][0] == "DepDelay" and shadow["Contributions"][0] == 0.4


def test_an_explanation_has_one_contribution_per_input():
    document = parse(valid_message()).response(Scored([0.1, 0.2, 0.6, 0.1], {
        "BaseProbability": 0.25, "Features": ["DepDelay", "Carrier"], "Contributions": [0.35],
        "BaseProbabilities": [0.25] * 4, "ContributionsByBucket": [[0.0] * 4, [0.0] * 4]}),
        "v1", dt.datetime.now(dt.UTC))
    with pytest.raises(ValidationError, match="differ in length"):
        PredictionResponse.model_validate(document)


def test_answers_stored_without_an_explanation_are_valid():
    document = parse(valid_message()).response(
        Scored([0.1, 0.2, 0.6, 0.1]), "v1", dt.datetime.now(dt.UTC),
        shadow=[("v2", Scored([0.7, 0.1, 0.1, 0.1]))])
    assert "Explanation" not in document and "Explanation" not in document["Shadow"][0]
    parsed = PredictionResponse.model_validate(document)
    assert parsed.Explanation is None and parsed.Shadow[0].Explanation is None


def test_the_published_json_schemas_are_current():
    for name, schema in json_schemas().items():
        published = SCHEMA_DIR / name
        assert published.exists(), f"run python -m flight_platform.core.contract to publish {name}"
        assert json.loads(published.read_text()) == schema, (
            f"{name} is stale: run python -m flight_platform.core.contract")


def test_the_request_schema_describes_the_wire_format():
    schema = json.loads((SCHEMA_DIR / "prediction_request.schema.json").read_text())
    assert set(schema["required"]) == set(json.loads(parse(valid_message()).to_message()))
    assert schema["properties"]["DepDelay"] == {**schema["properties"]["DepDelay"],
                                                "type": "number", "minimum": -1440, "maximum": 2880}
