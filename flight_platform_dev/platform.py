"""A whole private platform beside the default one (free ports, its own data dir), run as `make run`
runs it, and the platform's commands (the stack, a stream run) as processes of their own."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import bson
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from pymongo import MongoClient
from pymongo.database import Database

from flight_platform.clients.mongo import DISTANCE_PARTIALS, DISTANCES, create_client, ensure_index
from flight_platform.clients.security import Role
from flight_platform.core.model_store import ModelStore
from flight_platform.local import processes, services
from flight_platform.local.mongo_server import database_roles
from flight_platform.local.stack import dagster_environment
from flight_platform.settings import REPO_ROOT, Settings, load_settings, private_environment
from flight_platform.streaming.job import (
    CHALLENGERS_TAG,
    JOINED_TAG,
    MODEL_VERSION_TAG,
    WORKER_TAG,
    flight_delay_prediction_stream,
)
from flight_platform.streaming.supervisor import ALIVE
from flight_platform_dev.dagster_runs import BIN
from flight_platform_dev.load import SteadyLoad, WebLoad, request_factory, seconds_until_serving

STACK_UP_TIMEOUT_S = 600  # a first start materializes every asset
RECOVERY_TIMEOUT_S = 180
ROUTE_COLLECTIONS = (DISTANCES, DISTANCE_PARTIALS)


class PlatformProcess:
    """A command of the platform in a process of its own, its output appended to `log_path` (a
    restarted one appends to the same log: only what this one writes counts)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.process = processes.start(command, log_path, env=env, cwd=REPO_ROOT)

    @classmethod
    def stack(cls, env: dict[str, str], log_path: Path, materialize: bool = False) -> "PlatformProcess":
        """`python -m flight_platform.local.stack`, as `make run` starts it."""
        return cls([sys.executable, "-m", "flight_platform.local.stack",
                    *([] if materialize else ["--no-materialize"])], env, log_path)

    @classmethod
    def stream(cls, env: dict[str, str], log_path: Path) -> "PlatformProcess":
        """The streaming job run for real with `dg launch --job`, in this process."""
        return cls([str(BIN / "dg"), "launch", "--job", flight_delay_prediction_stream.name,
                    "-m", "flight_platform.definitions"], env, log_path)

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float, what: str) -> None:
        """Until it logs `text`; RuntimeError, with the log's end, if it exits first."""
        try:
            processes.wait_until(lambda: text in self.log(), timeout, what, process=self.process)
        except RuntimeError as exited:
            raise RuntimeError(f"{exited}:\n{self.log()[-5000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send it `sig` and wait for it to end; kill -9 it and what it started after `timeout`.
        Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            processes.hard_kill(self.process)
            return self.process.returncode

    def hard_kill(self, *also: int) -> int:
        """kill -9 it, every process it started and the pids `also`, as a power cut would; returns
        how many processes were killed."""
        return processes.hard_kill(self.process, *also)


def copy_materialized(source: Settings, target: Settings) -> None:
    """What `source`'s materialization made (its tables, model store and routes), copied into
    `target`'s data dir and Mongo database, instead of materializing again."""
    shutil.copytree(source.warehouse_dir, target.warehouse_dir)
    shutil.copytree(source.model_store_dir, target.model_store_dir)
    with create_client(source, Role.ADMIN) as from_client, create_client(target, Role.ADMIN) as to_client:
        for collection in ROUTE_COLLECTIONS:
            to_client[target.mongo_database][collection].insert_many(
                from_client[source.mongo_database][collection].find())


def save_materialized(settings: Settings, snapshot: Path) -> None:
    """What `settings`' materialization made, saved as the directory `snapshot` for platforms on
    other servers to start from (`restore_materialized`): its tables, model store and routes, and
    its Dagster instance (the SQLite files under DAGSTER_HOME: the runs' records tests read), with
    the passwords its run was given (its secrets dir), which tests search those records for."""
    partial = snapshot.with_name(f"{snapshot.name}.partial")
    shutil.copytree(settings.secrets_dir, partial / "secrets")  # modes kept: owner-only
    shutil.copytree(settings.warehouse_dir, partial / "warehouse")
    shutil.copytree(settings.model_store_dir, partial / "models")
    shutil.copytree(settings.dagster_home, partial / "dagster_home")
    (partial / "routes").mkdir()
    with create_client(settings, Role.ADMIN) as client:
        for collection in ROUTE_COLLECTIONS:
            documents = client[settings.mongo_database][collection].find()
            (partial / "routes" / f"{collection}.bson").write_bytes(b"".join(map(bson.encode, documents)))
    partial.rename(snapshot)  # whole or not at all: others may be waiting for it


def restore_materialized(snapshot: Path, settings: Settings) -> Path:
    """`snapshot` (`save_materialized`) given to a platform whose services run and hold nothing yet;
    returns the secrets dir of the platform that made it."""
    shutil.copytree(snapshot / "warehouse", settings.warehouse_dir)
    shutil.copytree(snapshot / "models", settings.model_store_dir)
    shutil.copytree(snapshot / "dagster_home", settings.dagster_home, dirs_exist_ok=True)
    with create_client(settings, Role.ADMIN) as client:
        database = client[settings.mongo_database]
        for collection in ROUTE_COLLECTIONS:
            database[collection].insert_many(
                bson.decode_all((snapshot / "routes" / f"{collection}.bson").read_bytes()))
            ensure_index(database, collection)
    return snapshot / "secrets"


def share_services(source: Settings, database: str) -> dict[str, str]:
    """For a platform on `source`'s Kafka and MongoDB servers with a data dir or a database of its
    own: gives `source`'s MongoDB users their roles on `database` too (users hold roles per
    database) and returns the settings that log it in as `source` does (its secrets dir: the
    passwords and the CA)."""
    security = source.mongo_security
    if security.enabled:
        with create_client(source, Role.ADMIN) as client:
            for role, login in security.logins.items():
                if role is not Role.ADMIN:
                    client[security.auth_source].command("grantRolesToUser", login.user,
                                                         roles=database_roles(role, database))
    return {"FLIGHT_PLATFORM_SECRETS_DIR": str(source.secrets_dir)}


def serving_runs(instance: DagsterInstance) -> list:
    """The stream runs that are serving: started, and their consumer has joined the group."""
    runs = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name,
                                        statuses=[DagsterRunStatus.STARTED]))
    return [run for run in runs if WORKER_TAG in run.tags and JOINED_TAG in run.tags]


def serving_run(instance: DagsterInstance):
    """A stream run that is serving, if any."""
    return next(iter(serving_runs(instance)), None)


def worker_pid(run: DagsterRun) -> int:
    """The pid of a serving stream run's process (its WORKER_TAG is host:pid)."""
    return int(run.tags[WORKER_TAG].rsplit(":", 1)[1])


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
        self.stack: PlatformProcess | None = None
        self._mongo: MongoClient | None = None  # as its admin, once its server has made the password

    @property
    def database(self) -> Database:
        if self._mongo is None:
            self._mongo = create_client(self.settings, Role.ADMIN)
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
            copy_materialized(self.seed_from, self.settings)
        self.stack = PlatformProcess.stack(self.env, self.log_dir / "stack.log",
                                           materialize=self.seed_from is None)
        self.stack.wait_for_log("flight_platform is up", STACK_UP_TIMEOUT_S, "the stack to come up")
        return seconds_until_serving(self.database, request_factory(self.database), self.settings,
                                     time.monotonic(), RECOVERY_TIMEOUT_S)

    def stop(self) -> None:
        # First, while its server answers: closing ends the client's sessions on the server, and
        # with the server gone it would wait out the server selection timeout.
        if self._mongo is not None:
            self._mongo.close()
            self._mongo = None
        if self.stack is not None:
            self.stack.stop(signal.SIGINT, timeout=120)  # Ctrl-C: the stack stops what it started
        services.down(self.settings)  # if the stack died before stopping them

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
    subprocess.run([str(BIN / "dg"), "launch", "--job", "promote_model", "-c", str(config),
                    "-m", "flight_platform.definitions"],
                   cwd=REPO_ROOT, env=platform.env, check=True, capture_output=True, timeout=300)


def rolled_out(instance: DagsterInstance, version: str, workers: int,
               challengers: list[str] | None = None) -> bool:
    """Every alive stream run serves `version` (beside `challengers`, when given: a change of
    challengers alone is a roll-out of its own), and `workers` of them have joined the group."""
    alive = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=ALIVE))
    serving = serving_runs(instance)
    return (all(run.tags.get(MODEL_VERSION_TAG) == version and (
                challengers is None or run.tags.get(CHALLENGERS_TAG) == " ".join(challengers))
                for run in alive)
            and len(serving) == workers)
