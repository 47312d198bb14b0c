"""The cost curve of the batch side: full materialization at 1x, 3x and 10x the bundled data, on
private services and a scratch data dir per scale.

    .venv/bin/python -m benchmarks.scale [--scales 1 3 10]

Scale k is the bundled 2013 flights plus k-1 derived years (2014, 2015, ...) written to the BTS
inbox as BTS-format monthly downloads (flight_platform_dev.derived_bts), so everything past 1x
goes through the real BTS reader. Prints, per scale: rows, each asset's step time, the wall time of
the CLI run, rows/s, peak memory (the run's process tree and the Spark Connect server, freshly
started for each scale) and the model's held-out accuracy.
Asserts nothing. Goals: 10x in <= 6x the 1x time, peak memory <= 6 GiB.
"""

import argparse

from benchmarks.materialize import timed_run
from benchmarks.private_platform import private_settings
from flight_platform.core.model_store import ModelStore
from flight_platform.local import services
from flight_platform.local.stack import dagster_environment, materialize_command, register_months
from flight_platform_dev.derived_bts import write_derived_months

BUNDLED_ROWS = 336_776
FIRST_DERIVED_YEAR = 2014


def measure(scale: int) -> dict:
    with private_settings() as settings:
        write_derived_months(settings.bts_dir, list(range(FIRST_DERIVED_YEAR,
                                                          FIRST_DERIVED_YEAR + scale - 1)),
                             list(range(1, 13)))
        env = dagster_environment(settings)
        try:
            services.up(settings)
            months = register_months(settings)
            wall, peak, steps = timed_run(materialize_command(months), env, settings)
        finally:
            services.down(settings)
        store = ModelStore(settings.model_store_dir)
        info = store.read_info(store.current_version())
    return {"scale": scale, "rows": BUNDLED_ROWS * scale, "months": len(months), "wall": wall,
            "steps": steps, "peak": peak, "accuracy": info["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3, 10])
    results = [measure(scale) for scale in parser.parse_args().scales]
    base = results[0]["wall"]
    print("\nFull materialization by scale (dg launch as make run runs it)")
    print(f"{'scale':>5} {'rows':>10} {'months':>6} {'wall s':>7} {'x 1st':>6} {'rows/s':>8} "
          f"{'peak GiB':>8} {'accuracy':>8}")
    for r in results:
        print(f"{r['scale']:>4}x {r['rows']:>10,} {r['months']:>6} {r['wall']:7.1f} "
              f"{r['wall'] / base:6.2f} {r['rows'] / r['wall']:8,.0f} {r['peak'] / 2**30:8.2f} "
              f"{r['accuracy']:8.3f}")
    print("\nStep seconds by scale")
    for step in results[0]["steps"]:
        print(f"  {step:52} " + " ".join(f"{r['steps'].get(step, 0):7.1f}" for r in results))


if __name__ == "__main__":
    main()
