"""The architecture's one import rule: the web app and the shared core load neither Dagster nor
Spark, so the web app deploys without them and the core can be used anywhere."""

import subprocess
import sys

import pytest

HEAVY = ("dagster", "pyspark")


@pytest.mark.parametrize("module", ["web.app", "flight_platform.core.contract",
                                    "flight_platform.core.scoring", "flight_platform.core.model_store",
                                    "flight_platform.clients.kafka", "flight_platform.clients.mongo"])
def test_importing_loads_neither_dagster_nor_spark(module):
    probe = (f"import sys, {module}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"{module} loads {loaded.stdout.strip()}"


def test_the_probe_notices_a_heavy_import():
    probe = "import sys, flight_platform.resources\nprint('dagster' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "True"
