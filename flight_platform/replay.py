"""Replay a real day: send that day's flights from `on_time_performance` as prediction requests, built
exactly as the web app builds them, through Kafka, then wait for the stream's answers in MongoDB.

    python -m flight_platform.replay --date 2013-06-15 [--rate 50] [--limit N] [--carrier DL] ...

A tool for people (progress bars, a summary) and the load generator of the tests and benchmarks
(`replay_day`). Each request is made as it is sent, as at departure time: the departure delay is
known, the arrival delay is what the model predicts. Flights go out in scheduled departure order.
Loads neither Dagster nor Spark: the month's Parquet directory is read with pyarrow.
"""

import argparse
import datetime as dt
import functools
import operator
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import pyarrow.compute as pc
from kafka.errors import KafkaError
from pymongo.database import Database
from pymongo.errors import PyMongoError
from tqdm import tqdm

from flight_platform import warehouse
from flight_platform.clients.kafka import close_in_background, connection, create_producer
from flight_platform.clients.mongo import (
    RESPONSES,
    create_client,
    explain,
    find_by_ids,
    get_flight_distance,
)
from flight_platform.clients.security import CredentialError, Role
from flight_platform.core.contract import FlightQuery, InvalidRequest, PredictionRequest
from flight_platform.settings import Settings, load_settings

# Scheduled departure order, ties broken so that a limit always picks the same flights.
DEPARTURE_ORDER = ["CRSDepTime", "Carrier", "FlightNum", "Origin", "Dest"]
COLUMNS = list(dict.fromkeys([*FlightQuery.model_fields, *DEPARTURE_ORDER]))

NO_DEP_DELAY = "no DepDelay (cancelled)"
UNKNOWN_ROUTE = "route not in origin_dest_distances"

NOTHING_TO_REPLAY = 2  # exit codes
SERVICE_FAILED = 1

T = TypeVar("T")

ACK_TIMEOUT_S = 60  # for the broker to acknowledge every request sent
POLL_INTERVAL_S = 0.2
ANSWER_FIELDS = {"RequestedAt": 1, "ScoredAt": 1, "ModelVersion": 1}


class ReplayError(Exception):
    """A replay that cannot be done, with the exit code the command ends with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Selection:
    """Which of the day's flights to replay; None selects any."""

    carrier: str | None = None
    origin: str | None = None
    dest: str | None = None
    min_dep_delay: float | None = None  # minutes; a delay bound also leaves out cancelled flights
    max_dep_delay: float | None = None

    def filter(self, flight_date: dt.date) -> pc.Expression:
        conditions = [pc.field("FlightDate") == flight_date]
        for column, code in (("Carrier", self.carrier), ("Origin", self.origin), ("Dest", self.dest)):
            if code is not None:
                conditions.append(pc.field(column) == code)
        if self.min_dep_delay is not None:
            conditions.append(pc.field("DepDelay") >= self.min_dep_delay)
        if self.max_dep_delay is not None:
            conditions.append(pc.field("DepDelay") <= self.max_dep_delay)
        return functools.reduce(operator.and_, conditions)

    def __str__(self) -> str:
        chosen = [f"{name}={value}" for name, value in asdict(self).items() if value is not None]
        return ", ".join(chosen) or "every flight"


@dataclass
class ReplaySummary:
    flight_date: dt.date
    selection: Selection
    selected: int  # the day's flights the selection picked, at most the limit
    skipped: Counter[str]  # why selected flights were not sent -> how many
    request_ids: list[str]  # the requests sent (acknowledged by the broker), in sending order
    latencies_s: list[float]  # per answer: ScoredAt - RequestedAt
    model_versions: Counter[str]  # the model version that answered -> how many

    @property
    def sent(self) -> int:
        return len(self.request_ids)

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered

    def latency_s(self, percentile: float) -> float | None:
        return float(np.percentile(self.latencies_s, percentile)) if self.latencies_s else None

    def report(self) -> str:
        def count_by(counts: Counter[str]) -> str:
            return ", ".join(f"{key}: {n}" for key, n in counts.most_common()) or "none"

        if self.latencies_s:
            # Whole milliseconds: BSON dates hold no finer time.
            latency = (f"median {self.latency_s(50) * 1000:.0f} ms, p95 {self.latency_s(95) * 1000:.0f} ms "
                       "(RequestedAt to ScoredAt)")
        else:
            latency = "none (nothing answered)"
        return "\n".join([
            f"Replayed {self.flight_date} ({self.selection})",
            f"  selected        {self.selected}",
            f"  skipped         {self.skipped.total()} ({count_by(self.skipped)})",
            f"  sent            {self.sent}",
            f"  answered        {self.answered}",
            f"  unanswered      {self.unanswered}",
            f"  latency         {latency}",
            f"  model versions  {count_by(self.model_versions)}",
        ])


def day_flights(settings: Settings, flight_date: dt.date, selection: Selection,
                limit: int | None = None) -> list[dict]:
    """The flights of `flight_date` that `selection` picks, in scheduled departure order, the first
    `limit` of them. ReplayError if that month is not in the warehouse."""
    month, root = f"{flight_date:%Y-%m}", str(settings.warehouse_dir)
    if not (directory := warehouse.month_path(root, warehouse.ON_TIME_PERFORMANCE, month)).is_dir():
        raise ReplayError(f"No {warehouse.ON_TIME_PERFORMANCE} data for {month} (no {directory}): "
                          "materialize that month first (`make run`, or the Dagster UI).",
                          NOTHING_TO_REPLAY)
    flights = warehouse.read_months(root, warehouse.ON_TIME_PERFORMANCE, [month], COLUMNS,
                                    selection.filter(flight_date))
    flights = flights.sort_by([(column, "ascending") for column in DEPARTURE_ORDER])
    return flights.slice(0, limit).to_pylist()


def flight_queries(database: Database, flights: list[dict]) -> tuple[list[tuple[FlightQuery, float]],
                                                                     Counter[str]]:
    """Each flight as the web app would take it from the form, with its route's distance; and
    why the flights that cannot be asked about were skipped."""
    distances: dict[tuple[str, str], float | None] = {}  # a day has far fewer routes than flights
    queries: list[tuple[FlightQuery, float]] = []
    skipped: Counter[str] = Counter()
    for flight in flights:
        if flight["DepDelay"] is None:
            skipped[NO_DEP_DELAY] += 1
            continue
        try:
            query = FlightQuery.from_fields({**flight, "FlightDate": flight["FlightDate"].isoformat()})
        except InvalidRequest as invalid:  # real data the contract refuses, e.g. an extreme delay
            skipped[f"off-contract {', '.join(invalid.errors)}"] += 1
            continue
        route = (query.Origin, query.Dest)
        if route not in distances:
            distances[route] = get_flight_distance(database, *route)
        if distances[route] is None:
            skipped[UNKNOWN_ROUTE] += 1
            continue
        queries.append((query, distances[route]))
    return queries, skipped


def paced(items: Iterable[T], rate: float | None) -> Iterator[T]:
    """`items`, each one handed out at its turn at `rate` per second from the first (None or 0: as
    soon as it is asked for). The turns are fixed from the start, so a slow send is caught up on
    rather than slowing the rate. The replay, the drills' steady load and the benchmarks send
    requests through it."""
    started = time.monotonic()
    for sent, item in enumerate(items):
        if rate:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield item


def send_requests(settings: Settings, queries: list[tuple[FlightQuery, float]], rate: float,
                  progress: bool) -> list[str]:
    """Publish a request per query at `rate` per second (0: as fast as possible); the ids of the
    requests, once the broker has acknowledged every one."""
    producer = None
    try:
        producer = create_producer(connection(settings, Role.BATCH))
        request_ids, acknowledgements = [], []
        for query, distance in paced(tqdm(queries, desc="sent", unit="req", disable=not progress), rate):
            # Made as it is sent, as the web app makes it on a POST: RequestedAt is the send time.
            request = PredictionRequest.create(**query.model_dump(), Distance=distance)
            acknowledgements.append(producer.send(settings.request_topic, request.to_message(),
                                                  key=request.UUID.encode()))
            request_ids.append(request.UUID)
        producer.flush(timeout=ACK_TIMEOUT_S)
        for acknowledgement in acknowledgements:
            acknowledgement.get(timeout=ACK_TIMEOUT_S)  # raises the error of a refused request
    except KafkaError as error:
        if producer is not None:
            close_in_background(producer)
        raise ReplayError(f"Kafka at {settings.kafka_bootstrap_servers} is unreachable or refused the "
                          f"requests of {settings.kafka_security.describe(Role.BATCH)}: "
                          f"{type(error).__name__}: {error}", SERVICE_FAILED) from None
    producer.close(timeout=ACK_TIMEOUT_S)
    return request_ids


def wait_for_answers(database: Database, request_ids: list[str], wait_s: float,
                     progress: bool) -> list[dict]:
    """The answers to `request_ids`, polled until every one is stored or `wait_s` has passed."""
    answers: dict[str, dict] = {}
    deadline = time.monotonic() + wait_s
    with tqdm(total=len(request_ids), desc="answered", unit="req", disable=not progress) as bar:
        while True:
            unanswered = [i for i in request_ids if i not in answers]
            answers.update((answer["_id"], answer) for answer in
                           find_by_ids(database[RESPONSES], unanswered, ANSWER_FIELDS))
            bar.update(len(answers) - bar.n)
            if len(answers) == len(request_ids) or time.monotonic() >= deadline:
                return list(answers.values())
            time.sleep(POLL_INTERVAL_S)


def replay_day(settings: Settings, flight_date: dt.date, selection: Selection = Selection(),
               rate: float = 50, limit: int | None = None, wait_s: float = 120,
               progress: bool = False) -> ReplaySummary:
    """Replay the selected flights of `flight_date` (the first `limit` by scheduled departure) at
    `rate` requests per second, and wait up to `wait_s` for their answers. ReplayError when there
    is nothing to replay or a service fails."""
    flights = day_flights(settings, flight_date, selection, limit)
    if not flights:
        raise ReplayError(f"No flights on {flight_date} match the selection ({selection}).",
                          NOTHING_TO_REPLAY)
    try:
        client = create_client(settings, Role.BATCH)  # reads routes and answers
    except CredentialError as error:
        raise ReplayError(str(error), SERVICE_FAILED) from None
    try:
        database = client[settings.mongo_database]
        queries, skipped = flight_queries(database, flights)
        if not queries:
            raise ReplayError(f"None of the {len(flights)} flights selected on {flight_date} can be "
                              f"asked about: {dict(skipped)}", NOTHING_TO_REPLAY)
        request_ids = send_requests(settings, queries, rate, progress)
        answers = wait_for_answers(database, request_ids, wait_s, progress)
    except PyMongoError as error:
        raise ReplayError(f"MongoDB at {settings.mongo_uri} failed: "
                          f"{explain(error, settings.mongo_security, Role.BATCH)}",
                          SERVICE_FAILED) from None
    finally:
        client.close()
    return ReplaySummary(
        flight_date=flight_date, selection=selection, selected=len(flights), skipped=skipped,
        request_ids=request_ids,
        latencies_s=[(a["ScoredAt"] - a["RequestedAt"]).total_seconds() for a in answers],
        model_versions=Counter(a["ModelVersion"] for a in answers))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flight_platform.replay", description=__doc__.split("\n\n")[0],
        epilog="Endpoints come from the FLIGHT_PLATFORM_* environment variables. Exit codes: 0 every "
               "request answered, 1 some unanswered or a service failed, 2 nothing to replay.")
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat,
                        help="the day to replay, YYYY-MM-DD (its month must be materialized)")
    parser.add_argument("--rate", type=float, default=50,
                        help="requests per second (default 50; 0 sends as fast as possible)")
    parser.add_argument("--limit", type=int, help="replay only the first N flights of the selection")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds to wait for the answers once everything is sent (default 120)")
    selection = parser.add_argument_group("selection (all must match)")
    selection.add_argument("--carrier", type=str.upper, help="a carrier code, e.g. DL")
    selection.add_argument("--origin", type=str.upper, help="an origin airport, e.g. JFK")
    selection.add_argument("--dest", type=str.upper, help="a destination airport, e.g. ATL")
    selection.add_argument("--min-dep-delay", type=float, metavar="MINUTES",
                           help="flights that left at least this late (leaves out cancelled ones)")
    selection.add_argument("--max-dep-delay", type=float, metavar="MINUTES",
                           help="flights that left at most this late (negative: early)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selection = Selection(carrier=args.carrier, origin=args.origin, dest=args.dest,
                          min_dep_delay=args.min_dep_delay, max_dep_delay=args.max_dep_delay)
    try:
        summary = replay_day(load_settings(), args.date, selection, rate=args.rate, limit=args.limit,
                             wait_s=args.timeout, progress=True)
    except ReplayError as error:
        print(f"replay: {error}", file=sys.stderr)
        return error.exit_code
    print(summary.report())
    if summary.unanswered:
        print(f"replay: {summary.unanswered} requests unanswered after {args.timeout:g} s",
              file=sys.stderr)
        return SERVICE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
