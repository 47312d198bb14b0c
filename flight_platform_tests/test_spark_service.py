"""Batch runs on the long-lived Spark Connect server: runs at once share it safely, and a run or the
server dying mid-step breaks nothing the next run reads.

Each test works on a copy of the session's materialized data (its own warehouse, model store, Mongo
database and Dagster instance), so what it trains or kills touches no other module's platform."""

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import DagsterEventType, DagsterInstance

from flight_platform.clients.mongo import create_client
from flight_platform.clients.security import Role
from flight_platform.core.model_store import ModelStore
from flight_platform.local import processes, services
from flight_platform.local.stack import dagster_environment, materialize_command, register_months
from flight_platform.settings import REPO_ROOT, Settings, free_port, load_settings
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES, ON_TIME_PERFORMANCE, month_path
from flight_platform_dev.dagster_runs import BIN
from flight_platform_dev.derived_bts import write_derived_months
from flight_platform_dev.platform import copy_materialized, share_services

pytestmark = pytest.mark.faults
NEW_MONTH = "2014-01"
RUN_TIMEOUT_S = 600


class CopiedPlatform:
    """The session's warehouse and model store copied under `root`, with a Dagster instance and
    Mongo database of its own; `environment` on top (e.g. another Spark server)."""

    def __init__(self, source: Settings, root: Path, environment: dict[str, str] | None = None):
        database = f"{source.mongo_database}_{root.name}"
        overrides = {"FLIGHT_PLATFORM_DATA_DIR": str(root / "data"),
                     "FLIGHT_PLATFORM_MONGO_DATABASE": database, **share_services(source, database),
                     **(environment or {})}
        self.settings = load_settings({**os.environ, **overrides})
        copy_materialized(source, self.settings)
        self.env = {**dagster_environment(self.settings), **overrides}
        self.months = register_months(self.settings)
        self.store = ModelStore(self.settings.model_store_dir)

    def launch(self, command: list[str], log: Path) -> subprocess.Popen:
        return processes.start(command, log, env=self.env, cwd=REPO_ROOT)

    def retrain(self, log: Path, **config) -> subprocess.Popen:
        """`dg launch` of the model, with `config` for its ModelTrainingConfig."""
        run_config = log.with_suffix(".json")
        run_config.write_text(json.dumps({"ops": {"flight_delay_model": {"config": config}}}))
        return self.launch([str(BIN / "dg"), "launch", "--assets", "flight_delay_model",
                            "-c", str(run_config), "-m", "flight_platform.definitions"], log)

    def new_month(self, log: Path) -> subprocess.Popen:
        """A BTS download for 2014-01 lands; its monthly assets are materialized, as the inbox
        sensor's run does."""
        write_derived_months(self.settings.bts_dir, [2014], [1])
        self.months = register_months(self.settings)
        return self.launch(materialize_command(
            [NEW_MONTH, NEW_MONTH], "on_time_performance,flight_delay_features,origin_dest_distances"),
            log)

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.settings.dagster_home))


def finished(process: subprocess.Popen, log: Path) -> str:
    """Wait for a `dg launch` to end and return its output; fail with it if the run failed."""
    process.wait(RUN_TIMEOUT_S)
    output = log.read_text()
    assert process.returncode == 0, output[-5000:]
    return output


def model_step_started(platform: CopiedPlatform) -> bool:
    with platform.instance() as instance:
        runs = instance.get_runs(limit=1)
        return bool(runs) and any(
            record.dagster_event.step_key == "flight_delay_model"
            for record in instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START))


@pytest.fixture
def copy_of_session(materialized, settings, tmp_path):
    copies: list[CopiedPlatform] = []

    def copy(name: str, environment: dict[str, str] | None = None) -> CopiedPlatform:
        copies.append(CopiedPlatform(settings, tmp_path / name, environment))
        return copies[-1]

    yield copy
    with create_client(settings, Role.ADMIN) as client:
        for platform in copies:
            client.drop_database(platform.settings.mongo_database)


def session_model_accuracy(settings: Settings) -> float:
    store = ModelStore(settings.model_store_dir)
    return store.read_info(store.current_version())["accuracy"]


def test_a_retrain_and_a_new_month_at_once_on_one_server(copy_of_session, settings, tmp_path):
    """The inbox sensor's month and an hourly retrain run together, each in its own Spark session
    on the same server: both succeed, and each gives what it gives alone (the retrain, on the same
    months with the same seed, exactly the session's held-out accuracy)."""
    retraining, ingesting = copy_of_session("retraining"), copy_of_session("ingesting")
    retrain = retraining.retrain(tmp_path / "retrain.log")
    month = ingesting.new_month(tmp_path / "month.log")
    finished(retrain, tmp_path / "retrain.log")
    finished(month, tmp_path / "month.log")

    info = retraining.store.read_info(retraining.store.current_version())
    assert info["months"] == retraining.months
    assert info["accuracy"] == pytest.approx(session_model_accuracy(settings), abs=1e-9)
    warehouse = str(ingesting.settings.warehouse_dir)

    def rows(table: str, month: str) -> int:
        return pq.read_table(month_path(warehouse, table, month)).num_rows

    # The derived month holds 2013-01's flights, moved to 2014.
    assert rows(ON_TIME_PERFORMANCE, NEW_MONTH) == rows(ON_TIME_PERFORMANCE, "2013-01")
    assert 0 < rows(FLIGHT_DELAY_FEATURES, NEW_MONTH) <= rows(ON_TIME_PERFORMANCE, NEW_MONTH)


def test_a_run_killed_mid_step_leaves_nothing_that_breaks_the_next(copy_of_session, settings,
                                                                   tmp_path):
    platform = copy_of_session("killed_run")
    versions = platform.store.versions()
    log = tmp_path / "killed.log"
    retrain = platform.retrain(log)
    processes.wait_until(lambda: model_step_started(platform), RUN_TIMEOUT_S,
                         "the retrain's model step to start", interval=0.5, process=retrain)
    processes.hard_kill(retrain)  # the run's process and everything it started, as kill -9 would

    assert platform.store.versions() == versions  # nothing saved by halves
    finished(platform.retrain(tmp_path / "again.log"), tmp_path / "again.log")
    info = platform.store.read_info(platform.store.current_version())
    assert info["accuracy"] == pytest.approx(session_model_accuracy(settings), abs=1e-9)


def test_the_server_killed_mid_step_fails_the_run_clearly_and_a_retry_succeeds(copy_of_session,
                                                                                tmp_path):
    """On a Spark server of its own, which it kills. Its retrains learn the latest month alone, and
    any sound candidate is promoted: the drill is about the failure and the retry, not the model.
    A call retries for ~4 s rather than ~15 (50 ms, 0.2, 0.8, 3.2 s) before its step fails."""
    platform = copy_of_session("killed_server",
                               {"FLIGHT_PLATFORM_SPARK_REMOTE": f"sc://127.0.0.1:{free_port()}",
                                "FLIGHT_PLATFORM_PROMOTION_TOLERANCE": "1",
                                "FLIGHT_PLATFORM_SPARK_CALL_RETRIES": "4"})
    server = services.spark_server(platform.settings)
    services.start(server)
    try:
        current = platform.store.current_version()
        log = tmp_path / "failed.log"
        retrain = platform.retrain(log, recent_months=1)
        processes.wait_until(lambda: model_step_started(platform), RUN_TIMEOUT_S,
                             "the retrain's model step to start", interval=0.5, process=retrain)
        services.kill(server)
        retrain.wait(RUN_TIMEOUT_S)
        assert retrain.returncode != 0
        output = log.read_text()
        # The failed step, the address it could not reach, and what to do.
        assert 'step "flight_delay_model" failed' in output, output[-5000:]
        assert f"{server.endpoint}: Failed to connect" in output
        assert f"The Spark Connect server at {server.remote} stopped answering" in output
        assert platform.store.current_version() == current  # the failed candidate serves nowhere

        assert "started" in services.start(server)
        finished(platform.retrain(tmp_path / "retried.log", recent_months=1), tmp_path / "retried.log")
        assert platform.store.current_version() != current
    finally:
        services.stop(server)
