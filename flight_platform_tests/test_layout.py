"""The architecture's one import rule: the web app and the shared core load neither Dagster nor
Spark, so the web app deploys without them and the core can be used anywhere. And the README's
Layout section matches the tree."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import setuptools

REPO_ROOT = Path(__file__).parents[1]

HEAVY = ("dagster", "pyspark")


@pytest.mark.parametrize("module", ["web.app", "flight_platform.core.contract",
                                    "flight_platform.core.scoring", "flight_platform.core.model_store",
                                    "flight_platform.clients.kafka", "flight_platform.clients.mongo",
                                    "flight_platform.warehouse", "flight_platform.replay"])
def test_importing_loads_neither_dagster_nor_spark(module):
    probe = (f"import sys, {module}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"{module} loads {loaded.stdout.strip()}"


def test_the_probe_notices_a_heavy_import():
    probe = "import sys, flight_platform.resources\nprint('dagster' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "True"


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


def readme_layout() -> str:
    """The code block of the README's Layout section."""
    section = (REPO_ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n")[1]


def test_the_readme_layout_names_every_module_and_top_level_folder():
    named = set(re.findall(r"[\w.]+/?", readme_layout()))
    modules = [path for package in ("flight_platform", "web", "flight_platform_dev")
               for path in (REPO_ROOT / package).rglob("*.py") if path.name != "__init__.py"]
    missing = [str(path.relative_to(REPO_ROOT)) for path in modules if path.name not in named]
    folders = {path.split("/")[0] for path in tracked_files()
               if "/" in path and not path.startswith(".")}
    missing += [f"{folder}/" for folder in sorted(folders) if f"{folder}/" not in named]
    assert missing == [], f"README's Layout leaves out {missing}"


def test_the_readme_layout_names_nothing_that_is_gone():
    layout = readme_layout()
    named = set(re.findall(r"\w+\.(?:py|json)\b", layout))
    existing = {Path(path).name for path in tracked_files()}
    assert named - existing == set(), f"README's Layout names {named - existing}, not in the tree"


def test_the_wheel_ships_the_product_and_not_the_development_harness():
    """The packages `pip install .` ships, found as setuptools finds them from pyproject.toml."""
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = setuptools.find_packages(where=REPO_ROOT, include=find["include"])
    assert {"flight_platform", "flight_platform.local", "web"} <= set(shipped)
    assert {package.split(".")[0] for package in shipped} == {"flight_platform", "web"}
    assert (REPO_ROOT / "flight_platform_dev" / "__init__.py").is_file()


def test_the_product_never_imports_the_development_harness():
    importing = [str(path.relative_to(REPO_ROOT)) for package in ("flight_platform", "web")
                 for path in (REPO_ROOT / package).rglob("*.py")
                 if re.search(r"^\s*(from|import) (flight_platform_dev|flight_platform_tests|benchmarks)\b",
                              path.read_text(), re.MULTILINE)]
    assert importing == []
