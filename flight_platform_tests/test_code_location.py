"""Loading the code location, as every Dagster process of `make run` does, warns of nothing a
person could act on: the beta and preview features the project chose are silenced once, in
flight_platform/__init__.py, and nothing else is."""

import subprocess
import sys

# kafka-python's DeprecationWarnings are hidden by Python's defaults outside __main__ anyway.
WARNINGS_AS_ERRORS = [sys.executable, "-W", "error", "-W", "ignore::DeprecationWarning", "-c"]


def test_loading_the_code_location_warns_of_nothing():
    load = "import flight_platform.definitions as d; d.defs().get_repository_def()"
    loaded = subprocess.run([*WARNINGS_AS_ERRORS, load], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]


def test_a_preview_feature_the_project_did_not_choose_still_warns():
    other = ("import warnings, flight_platform; from dagster import PreviewWarning; "
             "warnings.warn('Parameter `x` of function `y` is currently in preview', PreviewWarning)")
    warned = subprocess.run([*WARNINGS_AS_ERRORS, other], capture_output=True, text=True)
    assert warned.returncode != 0 and "PreviewWarning" in warned.stderr
