"""Prometheus' configuration for the platform: what it scrapes, the recording rules and the alerts.

Written from settings into Prometheus' data dir by `flight_platform.local.prometheus_server` (and
checked with `promtool` in the tests); `python -m flight_platform.monitoring.prometheus DIR` writes
the same two files for an existing Prometheus (README, "Operating it").

Every window is a number of scrape intervals, so a shorter interval (the tests' one second) makes the
same rules decide sooner: with the default 15 s, rates are over a minute, "lag growing" holds for two
minutes and "answers slow" for five.
"""

import argparse
import sys
from pathlib import Path

import yaml

from flight_platform.settings import Settings, load_settings
from flight_platform.warehouse import MODEL_FRESHNESS_CHECK

CONFIG_FILE = "prometheus.yml"
RULES_FILE = "flight_platform_rules.yml"
STREAM_TARGETS_GLOB = "stream-*.json"
RATE_WINDOW = 4  # scrape intervals a rate is taken over (Prometheus needs two samples at least)
# Alerts that need a person now (severity "page"); the others can wait for working hours ("ticket").
PAGING = {"FlightStreamNotServing", "FlightConsumerLagGrowing", "FlightWebErrors"}


def _seconds(settings: Settings, intervals: int) -> str:
    return f"{round(settings.prometheus_scrape_interval_s * intervals)}s"


def lookback_delta(settings: Settings) -> str:
    """How long a series' last sample counts as its value (Prometheus' default: 5 minutes). A
    Prometheus killed -9 writes no staleness markers, so after its restart the series of a worker
    that stopped meanwhile would still count that long, and "no worker serving" could not fire:
    a few scrape intervals suffice for series scraped every interval."""
    return _seconds(settings, RATE_WINDOW)


def config(settings: Settings, rules_path: Path) -> dict:
    """prometheus.yml: the web app, each stream worker (found through the files they write in
    settings.metrics_targets_dir) and the platform exporter."""
    interval = _seconds(settings, 1)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": _seconds(settings, 1)},
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {"job_name": "web", "static_configs": [
                {"targets": [f"{settings.web_host}:{settings.web_port}"]}]},
            {"job_name": "stream", "file_sd_configs": [
                {"files": [str(settings.metrics_targets_dir / STREAM_TARGETS_GLOB)],
                 "refresh_interval": interval}]},
            {"job_name": "platform", "static_configs": [
                {"targets": [f"{settings.metrics_host}:{settings.exporter_port}"]}]},
        ],
    }


def rules(settings: Settings) -> dict:
    """The recording rules the status views read, and the alerts, each with what to do in its
    annotations (README, "Operating it", says more)."""
    rate = _seconds(settings, RATE_WINDOW)

    def quantile(q: float, histogram: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{rate}])))"

    recording = [
        {"record": "flight:web_requests:rate",
         "expr": f"sum by (route, status) (rate(flight_web_requests_total[{rate}]))"},
        {"record": "flight:web_publish_seconds:p50", "expr": quantile(0.5, "flight_web_publish_seconds")},
        {"record": "flight:web_publish_seconds:p99", "expr": quantile(0.99, "flight_web_publish_seconds")},
        {"record": "flight:stream_answers:rate", "expr": f"sum(rate(flight_stream_answers_total[{rate}]))"},
        {"record": "flight:stream_dead_letters:rate",
         "expr": f"sum by (reason) (rate(flight_stream_dead_letters_total[{rate}]))"},
        {"record": "flight:stream_request_to_answer_seconds:p50",
         "expr": quantile(0.5, "flight_stream_request_to_answer_seconds")},
        {"record": "flight:stream_request_to_answer_seconds:p99",
         "expr": quantile(0.99, "flight_stream_request_to_answer_seconds")},
        {"record": "flight:consumer_group_lag:sum", "expr": "sum(flight_consumer_group_lag)"},
    ]

    def alert(name: str, expr: str, hold_intervals: int, summary: str, action: str) -> dict:
        return {"alert": name, "expr": expr, "for": _seconds(settings, hold_intervals),
                "labels": {"severity": "page" if name in PAGING else "ticket"},
                "annotations": {"summary": summary, "action": action}}

    alerts = [
        alert("FlightStreamNotServing",
              "absent(flight_stream_assigned_partitions) or sum(flight_stream_assigned_partitions) == 0",
              2, "No stream worker holds a request partition: requests are not being answered.",
              "Check the prediction_stream_supervisor sensor and the flight_delay_prediction_stream "
              "runs in the Dagster UI; a run that fails at once says why in its log."),
        alert("FlightConsumerLagGrowing",
              "flight:consumer_group_lag:sum > 0 and deriv(flight:consumer_group_lag:sum"
              f"[{rate}]) > 0", 8,
              "The consumer group falls further behind the request topic.",
              "More requests arrive than the workers answer: check the workers serve (FlightStreamNot"
              "Serving), then raise FLIGHT_PLATFORM_STREAM_WORKERS (README, 'Scaling out')."),
        alert("FlightAnswersSlow",
              f"flight:stream_request_to_answer_seconds:p99 > {settings.alert_answer_p99_s}", 20,
              f"p99 from request to stored answer is over {settings.alert_answer_p99_s} s.",
              "Check the lag and the box's CPU; MongoDB's write time; a challenger's score time "
              "(flight_stream_score_seconds{role=\"challenger\"})."),
        alert("FlightDeadLettersHigh",
              f"sum(flight:stream_dead_letters:rate) > {settings.alert_dead_letters_per_s}", 4,
              f"Over {settings.alert_dead_letters_per_s} dead letters a second.",
              "Read the newest documents of the dead_letters collection: their Reason says what "
              "producers send wrong (invalid_request) or what the model failed on (scoring_failed)."),
        alert("FlightWebErrors",
              "sum(flight:web_requests:rate{status=~\"5..\"}) / sum(flight:web_requests:rate) > 0.05", 4,
              "Over 5% of the web app's answers are 5xx.",
              "GET /health says which service is unreachable and why; flight_web_unavailable_total "
              "counts the 503s by service."),
        alert("FlightChampionLiveAccuracyLow",
              f"flight_model_live_accuracy{{role=\"champion\"}} < on (version, role) "
              f"flight_model_offline_accuracy - {settings.alert_live_accuracy_tolerance}", 0,
              "The serving model is less accurate on real flights than on its held-out rows.",
              "Read prediction_outcomes' metadata (accuracy per version, drift) in the Dagster UI; "
              "a retrain on recent months or promoting a challenger may help."),
        alert("FlightModelNotRetrained",
              f"flight_asset_check_passed{{check=\"{MODEL_FRESHNESS_CHECK}\"}} == 0", 0,
              "A month's features have waited longer than the retrain window for a training.",
              f"The {MODEL_FRESHNESS_CHECK} check in the Dagster UI names the months; then the "
              "flight_delay_model runs (a failed training says why), the batch_automation sensor "
              "and the daemon."),
    ]
    return {"groups": [{"name": "flight_platform_recording", "rules": recording},
                       {"name": "flight_platform_alerts", "rules": alerts}]}


def write(settings: Settings, directory: Path) -> Path:
    """Write the configuration and its rules into `directory`; returns the configuration's path."""
    directory.mkdir(parents=True, exist_ok=True)
    rules_path = directory / RULES_FILE
    rules_path.write_text(yaml.safe_dump(rules(settings), sort_keys=False))
    config_path = directory / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(config(settings, rules_path), sort_keys=False))
    return config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flight_platform.monitoring.prometheus",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="where to write prometheus.yml and the rules")
    print(write(load_settings(), parser.parse_args(argv).directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
