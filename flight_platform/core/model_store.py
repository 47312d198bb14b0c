"""Versioned model storage with an atomically moved `current` pointer.

    <root>/versions/<version>/spark_pipeline/   the Spark ML PipelineModel
    <root>/versions/<version>/model.json        metrics and provenance
    <root>/current                              the promoted version's name

A version directory is complete before `current` names it, and `current` is replaced with an
atomic rename, so a reader never sees half a model. Plain text, not a symlink, so it works the same
on object storage mounts.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

PIPELINE_DIR = "spark_pipeline"


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

    def promote(self, version: str) -> None:
        if not self.pipeline_dir(version).is_dir():
            raise FileNotFoundError(f"model version {version} has no saved pipeline")
        staged = self.root / f".current.{os.getpid()}"
        staged.write_text(version + "\n")
        os.replace(staged, self.pointer)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one. Returns what was deleted."""
        current = self.current_version()
        doomed = [v for v in self.versions()[:-keep] if v != current]
        for version in doomed:
            shutil.rmtree(self.version_dir(version))
        return doomed
