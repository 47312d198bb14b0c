"""Fuzzing the stream's parse step (`PredictionRequest.from_message`, exactly as the worker calls it):
whatever the bytes, the result is a valid request or the contract's own InvalidRequest with a short
reason, never another exception."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flight_platform.core.contract import MAX_MESSAGE_BYTES, InvalidRequest, PredictionRequest
from flight_platform_tests.test_contract import valid_message

MAX_REASON_CHARS = 1000  # twelve fields, each quoting at most a short piece of its value
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(st.text(max_size=10), children, max_size=5),
                           max_leaves=20)
edge_numbers = st.sampled_from([0, -0.0, 1e308, -1e308, 2 ** 63, -(2 ** 64), 10 ** 400,
                                float("nan"), float("inf"), float("-inf"), 5e-324, True, False])
edge_text = st.sampled_from(["", " ", "\x00", "\ud800", "\uffff", "𝟘𝟙", "١٢٣", "ＡＡ", "A" * 100_000,
                             "2013-02-30", "2013-1-1", "0000-00-00", "9999-12-31T99:99", "NaN"])
FIELDS = list(valid_message())


def outcome(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> PredictionRequest | None:
    """The parse result, or None for the contract's own refusal (anything else fails the test)."""
    try:
        request = PredictionRequest.from_message(payload, max_bytes)
    except InvalidRequest as invalid:
        assert invalid.errors and len(str(invalid)) <= MAX_REASON_CHARS, str(invalid)[:2000]
        return None
    assert PredictionRequest.from_message(request.to_message()) == request
    return request


@FUZZ
@given(json_values)
def test_any_json_value(value):
    outcome(json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes(payload):
    outcome(payload)


@st.composite
def mutated_requests(draw) -> bytes:
    message = valid_message()
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(FIELDS))
        mutation = draw(st.sampled_from(["swap", "number", "text", "drop", "extra", "deep"]))
        if mutation == "swap":
            message[field] = draw(json_values)
        elif mutation == "number":
            message[field] = draw(edge_numbers)
        elif mutation == "text":
            message[field] = draw(edge_text)
        elif mutation == "drop":
            message.pop(field, None)
        elif mutation == "extra":
            message[draw(st.text(max_size=20))] = draw(json_values)
        else:
            message[field] = None  # replaced below by deep nesting, which json.dumps cannot write
    payload = json.dumps(message, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    depth = draw(st.sampled_from([0, 10, 1000, 100_000]))
    return payload.replace(b"null", b"[" * depth + b"]" * depth, 1) if depth else payload


@FUZZ
@given(mutated_requests())
def test_mutations_of_a_valid_request(payload):
    outcome(payload, max_bytes=len(payload))


def test_the_unmutated_request_parses():
    assert outcome(json.dumps(valid_message()).encode()) is not None


@pytest.mark.parametrize("payload", [
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,  # RecursionError in json.loads
    b"[" * 100_000,
    b'{"UUID": ' + b"9" * 50_000 + b"}",
    b'{"Carrier": "' + b"A" * 60_000 + b'"}',
    b'{"DepDelay": NaN}', b'{"DepDelay": -Infinity}', b'{"DepDelay": 1e999}',
    b"\xef\xbb\xbf{}", b'"\\ud800"', b"",
    # Huge numbers are described, not quoted (and Python's repr refuses over 4,300 digits).
    b'{"FlightNum": 1' + b"0" * 400 + b', "Origin": 1' + b"0" * 400 + b', "UUID": 1' + b"0" * 5000 + b"}",
])
def test_hostile_messages_are_refused_with_a_short_reason(payload):
    assert outcome(payload) is None


def test_an_oversized_message_is_refused_unparsed():
    payload = json.dumps({**valid_message(), "padding": "x" * MAX_MESSAGE_BYTES}).encode()
    with pytest.raises(InvalidRequest, match=f"body is {len(payload):,} bytes, over the limit"):
        PredictionRequest.from_message(payload)


def test_a_null_message_is_refused():
    with pytest.raises(InvalidRequest, match="body is missing"):
        PredictionRequest.from_message(None)


def test_a_huge_field_is_quoted_briefly():
    with pytest.raises(InvalidRequest) as invalid:
        PredictionRequest.from_message(json.dumps(valid_message(Carrier="A" * 50_000)).encode())
    assert invalid.value.errors["Carrier"].endswith("... (50,000 characters)")
    assert len(str(invalid.value)) < 200
