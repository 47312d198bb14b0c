"""The JSON endpoints as an API: the app serves the OpenAPI document generated from the contract,
the committed copy is current, and schemathesis finds no input that gives a 500 or an answer the
document does not describe, against the live app (gunicorn, the stream, Kafka and MongoDB)."""

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from web import openapi

# A well-formed query for a route the data does not hold is refused with 422: the document cannot
# list the routes, so schema-valid input may get it.
API = schemathesis.openapi.from_dict(openapi.document(), config=schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "422"]}}}))
FUZZ_WAIT_S = 0.2
# One pytest item per operation, each with its own node id, so pytest-xdist schedules every one
# (schemathesis' own `parametrize` gives its items one shared node id).
OPERATIONS = [result.ok() for result in API.get_all_operations()]


def test_the_published_openapi_document_is_current():
    assert json.loads(openapi.DOCUMENT_PATH.read_text()) == openapi.document(), (
        "web/openapi.json is stale: run `python -m web.openapi`")


@pytest.mark.services
def test_the_app_serves_its_openapi_document(live_stack):
    with urllib.request.urlopen(f"{live_stack}/openapi.json", timeout=10) as served:
        assert json.load(served) == openapi.document()


@pytest.mark.services
@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_no_input_breaks_the_api(operation, live_stack):
    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def no_input_breaks(case):
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > FUZZ_WAIT_S:
            case.query["wait"] = FUZZ_WAIT_S  # a long poll for an id never sent holds the whole wait
        case.call_and_validate(base_url=live_stack)

    no_input_breaks()
