"""What each challenger (shadow) model adds to the streaming path's latency, on a private stack.

    .venv/bin/python -m benchmarks.shadow [--rates 20,500] [--seconds 15]

For 0, 1 and 2 challengers, then 0 again (the baseline is the mean of the two 0-challenger runs,
and how far they are apart the noise of the differences), the produce -> answer readable
latency is measured as benchmarks/stream.py measures it, at each rate. At a low rate every request
is timed, at a high one every 20th (about 25 timed requests per second either way, so the poller
costs the Mongo-protocol server the same).

The challengers are copies of the champion under new version names: same size and shape, so they
cost what a real challenger trained with the same hyperparameters costs. They are set through the
model store (`add_challenger`, `remove_challenger`) and served by the run the stream supervisor
launches; the measurement starts once every alive stream run carries the challengers tag and a
short warm-up is answered.

Each setting is rolled out as in production: the store's challengers change, the stream supervisor
replaces the serving run blue/green, and the measurement starts once the new run serves them.

The pure scoring cost of one model is measured in-process too: `PipelineScorer.probabilities`,
and `PipelineScorer.score` (probabilities, explanations and their documents, as the worker
serves them), on a batch of 1 and of 100 rows, the median of many repetitions. The stream worker scores each
polled batch once per model, so that is what every extra model adds to a batch before the
documents (a little larger with each prediction in `Shadow`) are stored.

Prints figures; asserts nothing. Goal: each extra model adds <= 1 ms at p50, with two challengers.
"""

import argparse
import os
import statistics
import time

import numpy as np
from dagster import RunsFilter

from benchmarks.private_platform import request_factory, running_platform
from benchmarks.stream import AnswerPoller, measure
from flight_platform.clients.mongo import find_by_ids
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer
from flight_platform.local.processes import wait_until
from flight_platform.streaming.job import CHALLENGERS_TAG, flight_delay_prediction_stream
from flight_platform.streaming.supervisor import ALIVE
from flight_platform_dev.platform import RECOVERY_TIMEOUT_S, PrivatePlatform, copy_of_champion, serving_runs

TIMED_PER_S = 25  # requests timed per second of a phase, at any rate
WARM_UP_S = 3
REPETITIONS = {1: 2000, 100: 300}  # in-process scoring: batch size -> calls timed


def set_challengers(store: ModelStore, versions: list[str]) -> None:
    for version in store.challengers():
        if version not in versions:
            store.remove_challenger(version)
    for version in versions:
        store.add_challenger(version, keep=2)


def serving_with(platform: PrivatePlatform, challengers: list[str]) -> bool:
    """Every alive stream run scores `challengers`, and all the workers have joined the group."""
    with platform.instance() as instance:
        runs = instance.get_runs(RunsFilter(job_name=flight_delay_prediction_stream.name, statuses=ALIVE))
        return (all(run.tags.get(CHALLENGERS_TAG) == " ".join(challengers) for run in runs)
                and len(serving_runs(instance)) == platform.settings.stream_workers)


def serve_with(platform: PrivatePlatform, challengers: list[str], warm_up_rate: float) -> None:
    """Make `challengers` the store's challengers and wait until the supervisor has rolled them
    out; then warm the new run up."""
    set_challengers(ModelStore(platform.settings.model_store_dir), challengers)
    wait_until(lambda: serving_with(platform, challengers), RECOVERY_TIMEOUT_S,
               f"the stream to serve with {len(challengers)} challenger(s)")
    measure(platform.settings, int(warm_up_rate * WARM_UP_S), warm_up_rate)


def with_shadows(poller: AnswerPoller, count: int) -> int:
    """How many of the poller's requests were answered with `count` challenger predictions."""
    return sum(len(doc["Shadow"]) == count
               for doc in find_by_ids(poller.responses, poller.request_ids, {"Shadow": 1}))


def stream_latency(platform: PrivatePlatform, challengers: list[str], rate: float,
                   seconds: float) -> dict:
    """p50/p95/p99 (ms) and the counts of one phase at `rate` with `challengers` serving."""
    poller, sent = measure(platform.settings, int(rate * seconds), rate,
                           sample_every=max(1, round(rate / TIMED_PER_S)))
    p50, p95, p99 = np.percentile(poller.latencies_ms(sent), [50, 95, 99])
    return {"challengers": len(challengers), "rate": rate, "p50": p50, "p95": p95, "p99": p99,
            "timed": len(poller.seen), "answered": poller.answered(), "sent": len(sent),
            "shadowed": with_shadows(poller, len(challengers))}


def scoring_ms(platform: PrivatePlatform, batch_size: int) -> dict[str, float]:
    """Median milliseconds of one model scoring a batch of `batch_size` rows in-process, with
    `probabilities` and with `score` (explained)."""
    store = ModelStore(platform.settings.model_store_dir)
    scorer = PipelineScorer.load(store.pipeline_dir(store.current_version()))
    make_request = request_factory(platform.settings)
    rows = [make_request().model_input() for _ in range(batch_size)]
    times: dict[str, list[float]] = {"probabilities": [], "explained": []}
    for _ in range(REPETITIONS[batch_size]):  # alternating, so both see the same machine
        for name, call in (("probabilities", scorer.probabilities), ("explained", scorer.score)):
            started = time.perf_counter()
            call(rows)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,500", help="steady request rates per second")
    parser.add_argument("--seconds", type=float, default=15, help="duration of each phase")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    load_before = load_average()
    with running_platform() as platform:
        scoring = {batch_size: scoring_ms(platform, batch_size) for batch_size in REPETITIONS}
        store = ModelStore(platform.settings.model_store_dir)
        spares = [copy_of_champion(store, f"shadow-copy-{i}") for i in (1, 2)]
        results = []
        for challengers in ([], spares[:1], spares, []):
            serve_with(platform, challengers, warm_up_rate=rates[0])
            results += [stream_latency(platform, challengers, rate, args.seconds) for rate in rates]
    load_after = load_average()

    print("\nStreaming path with challengers: Kafka produce -> Dagster streaming run (champion + "
          "challengers scored) -> MongoDB document visible")
    print(f"{'challengers':>11} {'rate/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'timed':>6} "
          f"{'answered/sent':>15} {'with k shadows':>15}")
    for r in results:
        print(f"{r['challengers']:>11} {r['rate']:>7,.0f} {r['p50']:>7.1f} {r['p95']:>7.1f} "
              f"{r['p99']:>7.1f} {r['timed']:>6,} {r['answered']:>7,}/{r['sent']:<7,} "
              f"{r['shadowed']:>15,}")

    print("\nAdded per extra model, against the mean of the two 0-challenger runs (the noise: how "
          "far those two are apart)")
    for rate in rates:
        zero_first, *shadowed, zero_again = [r for r in results if r["rate"] == rate]
        base = {p: (zero_first[p] + zero_again[p]) / 2 for p in ("p50", "p99")}
        for r in shadowed:
            print(f"  {r['challengers']} challenger(s) at {rate:>5,.0f}/s: "
                  f"p50 {(r['p50'] - base['p50']) / r['challengers']:+6.2f} ms, "
                  f"p99 {(r['p99'] - base['p99']) / r['challengers']:+6.2f} ms per model")
        print(f"  noise            at {rate:>5,.0f}/s: p50 {zero_again['p50'] - zero_first['p50']:+6.2f} ms, "
              f"p99 {zero_again['p99'] - zero_first['p99']:+6.2f} ms (0 again - 0 first)")

    print("\nOne model's scoring in-process (median): PipelineScorer.probabilities, and .score "
          "with explanations")
    for batch_size, ms in scoring.items():
        print(f"  batch of {batch_size:>3}: {ms['probabilities']:.3f} ms "
              f"({ms['probabilities'] / batch_size * 1000:.1f} us per row), explained "
              f"{ms['explained']:.3f} ms ({ms['explained'] / batch_size * 1000:.1f} us per row)")
    print(f"\nLoad average (1, 5, 15 min): before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
