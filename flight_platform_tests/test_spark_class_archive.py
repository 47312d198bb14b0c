"""Spark's driver JVM maps the classes it loads from the archive `make install` recorded
(flight_platform_dev.spark_class_archive). A missing or stale archive would not fail anything,
only cost seconds on every run, so this checks that the JVM really reads classes from it."""

import json
import subprocess
import sys

from flight_platform.resources import spark_config

# A JVM logs each class it loads and where from: a dynamic archive's "top" layer, or a jar.
# (Lambda proxies, generated at run time, come from neither.)
FROM_ARCHIVE = "source: shared objects file (top)"
FROM_JAR = ".jar"

DRIVER = """
import json, sys
from pyspark.sql import SparkSession
builder = SparkSession.builder
for key, value in json.loads(sys.argv[1]).items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
numbers = spark.range(1000)
numbers.groupBy((numbers.id % 7).alias("k")).count().collect()
spark.stop()
"""


def test_spark_driver_loads_its_classes_from_the_recorded_archive(settings, tmp_path):
    archive = settings.spark_class_archive
    assert archive is not None and archive.exists(), f"make install records {archive}"
    config = spark_config(settings)
    log = tmp_path / "class-load.log"
    config["spark.driver.extraJavaOptions"] += f" -Xlog:class+load=info:file={log}"

    # A process of its own: the test session's JVM may already be running.
    subprocess.run([sys.executable, "-c", DRIVER, json.dumps(config)], check=True, timeout=300,
                   capture_output=True)

    spark_classes = [line for line in log.read_text().splitlines() if " org.apache.spark." in line]
    from_archive = [line for line in spark_classes if line.endswith(FROM_ARCHIVE)]
    from_jars = [line for line in spark_classes if line.endswith(FROM_JAR)]
    assert len(from_archive) > 1000
    assert len(from_jars) < 0.1 * len(from_archive), from_jars[:5]
