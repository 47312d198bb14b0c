"""Versioned model storage with an atomically moved `current` pointer and a list of challengers.

    <root>/versions/<version>/spark_pipeline/   the Spark ML PipelineModel
    <root>/versions/<version>/model.json        metrics and provenance
    <root>/current                              the promoted version's name: the champion
    <root>/challengers                          versions scored in the shadow of the champion
    <root>/champions.json                       every champion: when and why it came and went

A version directory is complete before `current` or `challengers` names it, and both are replaced
with an atomic rename, so a reader never sees half a model or half a list. Plain text, not
symlinks, so it works the same on object storage mounts. Two writers at the same moment (a
training run and an operator's job) cannot corrupt the files; the last one wins.
"""

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

FLIGHT_DELAY_MODEL = "flight_delay_model"  # the asset saving versions here takes this name
PIPELINE_DIR = "spark_pipeline"


def _now() -> str:
    """When a champion came, went or ended its predecessor's probation, as champions.json says it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version

    def pipeline_dir(self, version: str) -> Path:
        return self.version_dir(version) / PIPELINE_DIR

    def versions(self) -> list[str]:
        """Saved versions, oldest first (version names sort by creation time)."""
        versions_dir = self.root / "versions"
        return sorted(p.name for p in versions_dir.iterdir()) if versions_dir.exists() else []

    def current_version(self) -> str | None:
        try:
            return self.pointer.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_info(self, version: str, info: dict[str, Any]) -> None:
        (self.version_dir(version) / "model.json").write_text(json.dumps(info, indent=2, default=str))

    def read_info(self, version: str) -> dict[str, Any]:
        return json.loads((self.version_dir(version) / "model.json").read_text())

    def _require_pipeline(self, version: str) -> None:
        if not self.pipeline_dir(version).is_dir():
            raise FileNotFoundError(f"model version {version} has no saved pipeline")

    def _replace(self, path: Path, lines: list[str]) -> None:
        staged = self.root / f".{path.name}.{os.getpid()}"
        staged.write_text("".join(f"{line}\n" for line in lines))
        os.replace(staged, path)

    def promote(self, version: str, reason: str, probation: bool = True) -> None:
        """Make `version` the champion (it stops being a challenger) and record why. With
        `probation`, the champion it replaces is scored beside it as a challenger (beyond the
        limit of challengers) until `end_probation`, so that live outcomes can restore it."""
        self._require_pipeline(version)
        previous = self.current_version()
        if previous == version:
            return
        now = _now()
        champions = self.champions()
        if champions and champions[-1]["version"] == previous:
            champions[-1].update(went=now, why_went=f"replaced by {version}: {reason}")
        on_probation = probation and previous is not None
        champions.append({"version": version, "came": now, "why_came": reason,
                          "replaced": previous, "probation": on_probation})
        self._replace(self.pointer, [version])
        self.remove_challenger(version)
        if on_probation:
            self._replace(self.root / "challengers",
                          [v for v in self.challengers() if v != previous] + [previous])
        self._write_champions(champions)

    def _write_champions(self, champions: list[dict[str, Any]]) -> None:
        self._replace(self.root / "champions.json", [json.dumps(champions, indent=1)])

    def champions(self) -> list[dict[str, Any]]:
        """Every champion, oldest first: version, came / went (ISO times) and why, the version it
        replaced and whether that one is on probation."""
        try:
            return json.loads((self.root / "champions.json").read_text())
        except FileNotFoundError:
            return []

    def on_probation(self) -> str | None:
        """The champion the current one replaced, while it is still scored beside it on probation."""
        champions = self.champions()
        latest = champions[-1] if champions else None
        if latest and latest["version"] == self.current_version() and latest["probation"] \
                and latest["replaced"] in self.challengers():
            return latest["replaced"]
        return None

    def end_probation(self, reason: str) -> str | None:
        """Stop scoring the replaced champion on probation; returns it (None if none was)."""
        previous = self.on_probation()
        if previous is None:
            return None
        champions = self.champions()
        champions[-1].update(probation=False, probation_ended=_now(), why_probation_ended=reason)
        self.remove_challenger(previous)
        self._write_champions(champions)
        return previous

    def challengers(self) -> list[str]:
        """The challenger versions, oldest first."""
        try:
            return (self.root / "challengers").read_text().split()
        except FileNotFoundError:
            return []

    def add_challenger(self, version: str, keep: int) -> list[str]:
        """Score `version` beside the champion, keeping only the newest `keep` challengers (each
        one costs every request a little latency). Returns the challengers it displaced."""
        self._require_pipeline(version)
        if version == self.current_version():
            raise ValueError(f"model version {version} is the champion, not a challenger")
        challengers = [v for v in self.challengers() if v != version] + [version]
        kept = challengers[-keep:] if keep > 0 else []
        self._replace(self.root / "challengers", kept)
        return [v for v in challengers if v not in kept]

    def remove_challenger(self, version: str) -> None:
        challengers = self.challengers()
        if version in challengers:
            challengers.remove(version)
            self._replace(self.root / "challengers", challengers)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the champion or a challenger. Returns
        what was deleted."""
        serving = {self.current_version(), *self.challengers()}
        doomed = [v for v in self.versions()[:-keep] if v not in serving]
        for version in doomed:
            shutil.rmtree(self.version_dir(version))
        return doomed
