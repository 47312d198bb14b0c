"""Metrics and alerts: Prometheus' configuration and rules pass promtool, the alerts decide as meant on series
given to `promtool test rules` (Prometheus' own rule engine, on a simulated clock), and the platform
exporter reports the consumer group's lag as the broker sees it and the batch side from the Dagster
instance and the model store."""

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import replace

import pandas as pd
import pytest
import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    asset,
    instance_for_test,
    materialize,
)
from prometheus_client import generate_latest

from flight_platform.batch.metadata import frame_table
from flight_platform.clients.kafka import connection, create_consumer, create_producer
from flight_platform.clients.kafka_access import prepare_topic
from flight_platform.clients.security import Role
from flight_platform.core.model_store import ModelStore
from flight_platform.local import processes
from flight_platform.local.processes import wait_until
from flight_platform.local.stack import dagster_environment
from flight_platform.monitoring import exporter, prometheus
from flight_platform.settings import load_settings, private_environment
from flight_platform.warehouse import (
    DRIFT_CHECK,
    MODEL_FRESHNESS_CHECK,
    ON_TIME_PERFORMANCE,
    PREDICTION_OUTCOMES,
)
from flight_platform_dev.metrics import Scrape

CHECK_PASSED = "flight_asset_check_passed"


def promtool(*args: str) -> str:
    checked = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"promtool {' '.join(args)}:\n{checked.stdout}{checked.stderr}"
    return checked.stdout


def test_the_configuration_and_its_rules_pass_promtool(settings, tmp_path):
    config = prometheus.write(settings, tmp_path)
    promtool("check", "config", str(config))
    assert "15 rules found" in promtool("check", "rules", str(tmp_path / prometheus.RULES_FILE))


def alert(name: str, settings, **labels: str) -> dict:
    """An alert as `promtool test rules` expects it to fire: its labels and annotations."""
    rule = next(rule for group in prometheus.rules(settings)["groups"] for rule in group["rules"]
                if rule.get("alert") == name)
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def test_the_alerts_fire_when_they_should_and_only_then(settings, tmp_path):
    """With the default 15 s scrape interval: each alert pending, then firing after its hold; the
    healthy look-alike of each never fires."""
    settings = replace(settings, prometheus_scrape_interval_s=15.0)  # whatever the environment sets
    prometheus.write(settings, tmp_path)
    tests = [
        {"interval": "15s",  # the workers hold their partitions, then all of them are gone
         "input_series": [{"series": 'flight_stream_assigned_partitions{instance="a"}',
                           "values": "3x8 0x20"}],
         "alert_rule_test": [
             {"eval_time": "2m", "alertname": "FlightStreamNotServing", "exp_alerts": []},
             {"eval_time": "2m30s", "alertname": "FlightStreamNotServing", "exp_alerts": []},
             {"eval_time": "3m", "alertname": "FlightStreamNotServing",
              "exp_alerts": [alert("FlightStreamNotServing", settings)]}]},
        {"interval": "15s",  # no worker ever reported
         "input_series": [{"series": 'up{job="web"}', "values": "1x20"}],
         "alert_rule_test": [{"eval_time": "2m", "alertname": "FlightStreamNotServing",
                              "exp_alerts": [alert("FlightStreamNotServing", settings)]}]},
        {"interval": "15s",  # lag that keeps growing fires; lag that stays put does not
         "input_series": [{"series": 'flight_consumer_group_lag{partition="0"}', "values": "0+10x30"}],
         "alert_rule_test": [
             {"eval_time": "1m", "alertname": "FlightConsumerLagGrowing", "exp_alerts": []},
             {"eval_time": "5m", "alertname": "FlightConsumerLagGrowing",
              "exp_alerts": [alert("FlightConsumerLagGrowing", settings)]}]},
        {"interval": "15s",
         "input_series": [{"series": 'flight_consumer_group_lag{partition="0"}', "values": "50x30"}],
         "alert_rule_test": [{"eval_time": "5m", "alertname": "FlightConsumerLagGrowing",
                              "exp_alerts": []}]},
        {"interval": "15s",  # every answer takes 2.5 to 5 s: p99 over 2 s for five minutes
         "input_series": [
             {"series": f'flight_stream_request_to_answer_seconds_bucket{{le="{le}"}}', "values": values}
             for le, values in [("1.0", "0x40"), ("2.5", "0x40"), ("5.0", "0+10x40"),
                                ("+Inf", "0+10x40")]],
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "FlightAnswersSlow", "exp_alerts": []},
             {"eval_time": "8m", "alertname": "FlightAnswersSlow",
              "exp_alerts": [alert("FlightAnswersSlow", settings)]}]},
        {"interval": "15s",  # the champion's live accuracy far below its offline; a challenger's too
         "input_series": [
             {"series": 'flight_model_live_accuracy{version="v2",role="champion"}', "values": "0.40x10"},
             {"series": 'flight_model_offline_accuracy{version="v2",role="champion"}', "values": "0.56x10"},
             {"series": 'flight_model_live_accuracy{version="v1",role="challenger"}', "values": "0.30x10"},
             {"series": 'flight_model_offline_accuracy{version="v1",role="challenger"}',
              "values": "0.56x10"}],
         "alert_rule_test": [{"eval_time": "1m", "alertname": "FlightChampionLiveAccuracyLow",
                              "exp_alerts": [alert("FlightChampionLiveAccuracyLow", settings,
                                                   version="v2", role="champion")]}]},
        {"interval": "15s",  # the model's freshness check fails; the drift check's failing does not page it
         "input_series": [
             {"series": f'{CHECK_PASSED}{{asset="flight_delay_model",check="{MODEL_FRESHNESS_CHECK}"}}',
              "values": "1x4 0x4"},
             {"series": f'{CHECK_PASSED}{{asset="prediction_outcomes",check="{DRIFT_CHECK}"}}',
              "values": "0x8"}],
         "alert_rule_test": [
             {"eval_time": "45s", "alertname": "FlightModelNotRetrained", "exp_alerts": []},
             {"eval_time": "1m30s", "alertname": "FlightModelNotRetrained",
              "exp_alerts": [alert("FlightModelNotRetrained", settings, asset="flight_delay_model",
                                   check=MODEL_FRESHNESS_CHECK)]}]},
    ]
    unit_tests = tmp_path / "alerts_test.yml"
    unit_tests.write_text(yaml.safe_dump({"rule_files": [prometheus.RULES_FILE], "evaluation_interval": "15s",
                                          "tests": tests}, sort_keys=False))
    assert "SUCCESS" in promtool("test", "rules", str(unit_tests))


@asset(name=PREDICTION_OUTCOMES, check_specs=[AssetCheckSpec(DRIFT_CHECK, asset=PREDICTION_OUTCOMES)])
def prediction_outcomes_whose_run_dies():
    raise RuntimeError("the run died before the drift check was evaluated")


@pytest.fixture
def stream_group(settings):
    """Settings whose request topic and consumer group are fresh, with the stream user's rights."""
    topic = f"requests_{uuid.uuid4().hex[:8]}"
    prepare_topic(settings, topic, f"group_{topic}", partitions=3)
    return replace(settings, request_topic=topic, consumer_group=f"group_{topic}")


def exposition(collectors) -> Scrape:
    """What a scrape of the exporter returns, checked by promtool."""
    text = generate_latest(collectors).decode()
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return Scrape(text)


def test_the_exporter_reports_the_groups_lag_and_the_batch_state(materialized, stream_group):
    settings = stream_group
    producer = create_producer(connection(settings, Role.BATCH))
    for i in range(12):
        producer.send(settings.request_topic, f"request {i}".encode(), partition=i % 3)
    producer.flush()
    producer.close()

    with DagsterInstance.get() as instance:
        collectors = exporter.registry(settings, instance)
        before = exposition(collectors)
        assert before.value("flight_exporter_source_up", source="kafka") == 1
        assert before.value("flight_exporter_source_up", source="dagster") == 1
        assert [before.value("flight_consumer_group_lag", group=settings.consumer_group,
                             topic=settings.request_topic, partition=str(p)) for p in range(3)] == [4, 4, 4]

        # The group reads and commits everything: lag 0, as the broker sees it.
        consumer = create_consumer(connection(settings, Role.STREAM), settings.consumer_group,
                                   settings.request_topic, settings.consumer_session_timeout_ms)
        read = []
        wait_until(lambda: read.extend(r for rs in consumer.poll(500).values() for r in rs)
                   or len(read) == 12, 60, "every request read")
        consumer.commit()
        consumer.close()
        after = exposition(collectors)
        assert after.total("flight_consumer_group_lag") == 0

        store = ModelStore(settings.model_store_dir)
        champion = store.current_version()
        assert after.value("flight_model_offline_accuracy", version=champion, role="champion") == \
            pytest.approx(store.read_info(champion)["accuracy"])
        materialized_at = instance.get_latest_materialization_event(
            exporter.AssetKey(ON_TIME_PERFORMANCE)).timestamp
        assert after.value("flight_asset_last_materialization_timestamp_seconds",
                           asset=ON_TIME_PERFORMANCE) == pytest.approx(materialized_at)
        assert after.value("flight_asset_rows", asset=ON_TIME_PERFORMANCE) > 0
        assert after.value("flight_asset_materialization_duration_seconds", asset=ON_TIME_PERFORMANCE) > 0
        # The materialization checked that the model learned every month it materialized.
        assert after.value(CHECK_PASSED, asset="flight_delay_model", check=MODEL_FRESHNESS_CHECK) == 1


def test_the_exporter_says_when_kafka_cannot_be_read(materialized, settings):
    unreachable = replace(settings, kafka_bootstrap_servers="127.0.0.1:9")
    with DagsterInstance.get() as instance:
        scraped = exposition(exporter.registry(unreachable, instance))
    assert scraped.value("flight_exporter_source_up", source="kafka") == 0
    assert scraped.value("flight_exporter_source_up", source="dagster") == 1


# The exporter with a thread that never ends, as a library's hung thread would: the interpreter
# waits for it at exit.
HANGS_WHEN_STOPPING = """
import sys, threading
from flight_platform.monitoring import exporter
threading.Thread(target=threading.Event().wait).start()
sys.exit(exporter.main())
"""


def test_an_exporter_hung_while_stopping_logs_its_threads_and_ends(tmp_path):
    env = {**os.environ, **private_environment(tmp_path / "data")}
    settings = load_settings(env)
    settings.dagster_home.mkdir(parents=True)
    log = tmp_path / "exporter.log"
    process = processes.start([sys.executable, "-c", HANGS_WHEN_STOPPING], log,
                              env={**env, **dagster_environment(settings)})
    try:
        wait_until(lambda: "Serving the platform's metrics" in log.read_text(), 60, "the exporter to serve",
                   process=process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(exporter.SHUTDOWN_TIMEOUT_S + 30) == 1  # ended by itself, not killed
    finally:
        process.kill()
    output = log.read_text()
    assert "Stopping" in output and "Thread 0x" in output and "in wait" in output, output[-3000:]


def test_the_exporter_reports_live_accuracy_and_drift_as_prediction_outcomes_last_judged(materialized,
                                                                                      settings):
    """From the latest prediction_outcomes materialization and drift check evaluation, with the
    metadata the asset and its check give them, reported to an instance of its own (the session's
    is left as it is)."""
    store = ModelStore(settings.model_store_dir)
    champion = store.current_version()
    with instance_for_test() as instance:
        before = exposition(exporter.registry(settings, instance))
        assert before.value("flight_exporter_source_up", source="dagster") == 1
        assert before.total("flight_model_live_accuracy") == before.total("flight_feature_drift_psi") == 0

        outcomes = AssetKey(PREDICTION_OUTCOMES)
        instance.report_runless_asset_event(AssetMaterialization(outcomes, partition="2013-06", metadata={
            "accuracy_by_version": frame_table(pd.DataFrame({
                "ModelVersion": [champion, "20130101T000000Z-retired"], "Accuracy": [0.61, 0.55],
                "Matched": [900, 900]}))}))
        instance.report_runless_asset_event(AssetCheckEvaluation(
            asset_key=outcomes, check_name=DRIFT_CHECK, passed=False, severity=AssetCheckSeverity.WARN,
            metadata={"psi_by_feature": frame_table(pd.DataFrame({"Feature": ["DepDelay", "Distance"],
                                                                 "PSI": [0.31, 0.02]}))}))
        # A later run plans the drift check and dies before evaluating it: the result before stands.
        died = materialize([prediction_outcomes_whose_run_dies], instance=instance, raise_on_error=False)
        assert not died.success
        assert instance.get_latest_asset_check_evaluation_record(exporter.DRIFT).status.value == "PLANNED"
        after = exposition(exporter.registry(settings, instance))
    # Reported without a run, as the UI's "Report materialization" does: no step, so no duration.
    assert after.value("flight_exporter_source_up", source="dagster") == 1
    assert after.value("flight_asset_last_materialization_timestamp_seconds", asset=PREDICTION_OUTCOMES) > 0
    assert after.value("flight_asset_materialization_duration_seconds", asset=PREDICTION_OUTCOMES) is None
    assert after.value("flight_model_live_accuracy", version=champion, role="champion") == 0.61
    assert after.value("flight_model_live_matched_answers", version=champion, role="champion") == 900
    assert after.value("flight_model_live_accuracy", version="20130101T000000Z-retired",
                       role=exporter.RETIRED) == 0.55
    assert after.value("flight_feature_drift_psi", feature="DepDelay") == pytest.approx(0.31)
    assert after.value("flight_feature_drift_psi", feature="Distance") == pytest.approx(0.02)
    assert after.value(CHECK_PASSED, asset=PREDICTION_OUTCOMES, check=DRIFT_CHECK) == 0
