"""What `make run` decides before serving: which months exist, and whether anything must be
materialized (a restart with everything in place serves at once); and how it stops what it started."""

import sys

import pytest
from dagster import AssetMaterialization, DagsterInstance

from flight_platform.batch.sources import BUNDLED_MONTHS, flight_months
from flight_platform.core.model_store import ModelStore
from flight_platform.local import processes
from flight_platform.local.stack import (
    MONTHLY_ASSETS,
    dagster_environment,
    register_months,
    unmaterialized,
)
from flight_platform.resources import build_resources
from flight_platform.settings import free_port, load_settings, private_environment
from flight_platform_dev.derived_bts import write_derived_months


def private_settings(tmp_path):
    settings = load_settings(private_environment(tmp_path / "data"))
    settings.dagster_home.mkdir(parents=True)
    return settings


def test_months_come_from_the_bundled_year_and_the_inbox(tmp_path, nyc_flights):
    settings = private_settings(tmp_path)
    assert register_months(settings) == BUNDLED_MONTHS
    write_derived_months(settings.bts_dir, [2012], [12], flights=nyc_flights)
    # Registered in arrival order: partition ranges follow it.
    assert register_months(settings) == [*BUNDLED_MONTHS, "2012-12"]


def test_a_restart_with_everything_materialized_materializes_nothing(tmp_path):
    settings = private_settings(tmp_path)
    months = register_months(settings)
    assert len(unmaterialized(settings, months)) == len(MONTHLY_ASSETS) * 12 + 1  # + the model
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        for asset in MONTHLY_ASSETS:
            for month in months:
                if (asset, month) != ("flight_delay_features", "2013-05"):
                    instance.report_runless_asset_event(AssetMaterialization(asset, partition=month))
        assert instance.get_dynamic_partitions(flight_months.name) == months
    store = ModelStore(settings.model_store_dir)
    store.pipeline_dir("v1").mkdir(parents=True)
    store.promote("v1", "set up by the test", probation=False)
    assert unmaterialized(settings, months) == ["flight_delay_features[2013-05]"]
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        instance.report_runless_asset_event(
            AssetMaterialization("flight_delay_features", partition="2013-05"))
    assert unmaterialized(settings, months) == []


def test_the_daemon_launches_queued_runs_as_often_as_the_setting_says(tmp_path):
    settings = load_settings({**private_environment(tmp_path / "data"),
                              "FLIGHT_PLATFORM_DAGSTER_DEQUEUE_INTERVAL_S": "3"})
    dagster_environment(settings)  # writes DAGSTER_HOME's dagster.yaml
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.run_coordinator.dequeue_interval_seconds == 3
        assert instance.run_monitoring_enabled  # the project's own settings are there too


def test_more_workers_than_partitions_is_refused_saying_what_to_change():
    with pytest.raises(ValueError, match="STREAM_WORKERS is 4.*3 partitions.*--partitions 4"):
        load_settings({"FLIGHT_PLATFORM_STREAM_WORKERS": "4",
                       "FLIGHT_PLATFORM_REQUEST_TOPIC_PARTITIONS": "3"})
    assert load_settings({"FLIGHT_PLATFORM_STREAM_WORKERS": "3"}).stream_workers == 3


def test_the_spark_call_retries_reach_the_batch_runs_and_a_negative_count_is_refused():
    settings = load_settings({"FLIGHT_PLATFORM_SPARK_CALL_RETRIES": "2"})
    assert build_resources(settings)["spark"].call_retries == 2
    assert build_resources(load_settings({}))["spark"].call_retries == 6
    with pytest.raises(ValueError, match="SPARK_CALL_RETRIES is -1"):
        load_settings({"FLIGHT_PLATFORM_SPARK_CALL_RETRIES": "-1"})


def test_free_ports_are_never_handed_out_twice():
    """Ports picked for a stack's settings and its Kafka controllers before any is bound: the OS
    offers a port again until its taker binds it, so two picks could collide."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_free_ports_come_from_the_private_range_when_one_is_set(monkeypatch):
    """Each of the suite's workers picks from a range of its own: two workers never pick the same
    port, which the OS alone could offer to both."""
    monkeypatch.setenv("FLIGHT_PLATFORM_PRIVATE_PORTS", "41000-41499")
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(41000 <= port <= 41499 for port in ports)


# A group's leader that, stopping, starts its child again, as `dg dev` restarts a code server that
# exited before `dg dev` itself stopped: the new child was not there for the group's SIGTERM.
RESTARTS_ITS_CHILD = """
import signal, subprocess, sys
CHILD = [sys.executable, "-c", "import time; time.sleep(600)"]
child = subprocess.Popen(CHILD)

def stop(*_):
    child.wait()  # ended by the group's SIGTERM
    subprocess.Popen(CHILD).wait()  # started again: it ends on a signal of its own only
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
signal.pause()
"""


def test_stopping_reaches_a_process_started_into_the_group_while_it_stops(tmp_path):
    script, log = tmp_path / "restarts_its_child.py", tmp_path / "restarts_its_child.log"
    script.write_text(RESTARTS_ITS_CHILD)
    leader = processes.start([sys.executable, str(script)], log)
    processes.wait_until(lambda: "ready" in log.read_text(), 30, "the leader to start", process=leader)
    assert processes.stop(leader, timeout=20) == []  # nothing left to kill
    assert leader.returncode == 0
