"""Replaying a real day: the day's flights go through Kafka as the web app would send them, and the
stream answers each one."""

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from flight_platform.clients.mongo import RESPONSES, create_client, find_by_ids
from flight_platform.clients.security import Role
from flight_platform.replay import NO_DEP_DELAY, Selection, replay_day
from flight_platform.settings import REPO_ROOT, free_port

pytestmark = pytest.mark.services

DAY = dt.date(2013, 6, 15)
FLIGHT_FIELDS = ["FlightDate", "Carrier", "FlightNum", "Origin", "Dest", "DepDelay"]


@pytest.fixture
def mongo(settings) -> Iterator[MongoClient]:
    with create_client(settings, Role.ADMIN) as client:
        yield client


def replay_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flight_platform.replay", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def flight(record: dict) -> tuple:
    return tuple(str(record[name]) for name in FLIGHT_FIELDS)


def test_a_replayed_day_is_answered_flight_by_flight(live_stack, settings, mongo, nyc_flights):
    # 9E's first 40 departures that day include two cancelled flights (no DepDelay).
    summary = replay_day(settings, DAY, Selection(carrier="9E"), rate=0, limit=40, wait_s=120)

    day = nyc_flights[(nyc_flights["FlightDate"] == DAY) & (nyc_flights["Carrier"] == "9E")]
    expected = day.sort_values(["CRSDepTime", "Carrier", "FlightNum", "Origin", "Dest"]).head(40)
    departed = expected[expected["DepDelay"].notna()]
    assert summary.selected == 40
    assert summary.skipped == {NO_DEP_DELAY: 2}
    assert summary.sent == summary.answered == len(departed) == 38
    assert summary.unanswered == 0
    assert len(summary.latencies_s) == 38 and min(summary.latencies_s) >= 0
    assert summary.model_versions.total() == 38

    answers = list(find_by_ids(mongo[settings.mongo_database][RESPONSES], summary.request_ids))
    assert sorted(flight(answer) for answer in answers) == sorted(
        flight({**row, "FlightDate": DAY.isoformat()}) for row in departed.to_dict("records"))


def test_the_command_replays_an_unusual_day_and_prints_a_summary(live_stack, nyc_flights):
    late = nyc_flights[(nyc_flights["FlightDate"] == DAY) & (nyc_flights["Origin"] == "JFK")
                       & (nyc_flights["DepDelay"] >= 60)]
    assert len(late) > 0

    replayed = replay_cli("--date", DAY.isoformat(), "--origin", "jfk", "--min-dep-delay", "60",
                          "--rate", "0")

    assert replayed.returncode == 0, replayed.stderr
    summary = dict(line.split(maxsplit=1) for line in replayed.stdout.splitlines()[1:])
    assert summary["selected"] == summary["sent"] == summary["answered"] == str(len(late))
    assert summary["unanswered"] == "0"
    assert "median" in summary["latency"] and "p95" in summary["latency"]
    assert "Traceback" not in replayed.stderr


def test_a_month_not_materialized_is_a_clear_error(settings):
    replayed = replay_cli("--date", "2019-01-01")

    assert replayed.returncode == 2
    assert "No on_time_performance data for 2019-01" in replayed.stderr
    assert "materialize that month" in replayed.stderr
    assert "Traceback" not in replayed.stderr


def test_a_selection_without_flights_is_a_clear_error(materialized):
    replayed = replay_cli("--date", DAY.isoformat(), "--carrier", "ZZ")

    assert replayed.returncode == 2
    assert f"No flights on {DAY} match the selection (carrier=ZZ)" in replayed.stderr
    assert "Traceback" not in replayed.stderr


def test_an_unreachable_broker_is_a_clear_error(materialized):
    nothing_listening = {**os.environ,
                         "FLIGHT_PLATFORM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}

    replayed = replay_cli("--date", DAY.isoformat(), "--limit", "5", env=nothing_listening)

    assert replayed.returncode == 1
    assert "Kafka at 127.0.0.1:" in replayed.stderr and "unreachable" in replayed.stderr
    assert "Traceback" not in replayed.stderr
