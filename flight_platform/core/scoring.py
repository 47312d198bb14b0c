"""Low-latency scoring with a saved Spark ML PipelineModel, evaluated in NumPy.

`PipelineModel.transform` costs about 0.3 s of Spark job overhead per call whatever the batch size,
and even a single-vector `predict` through py4j is a JVM round trip per row. The streaming job
needs milliseconds, so it reads the fitted model straight from the directory Spark saved: the
StringIndexer label lists, the VectorAssembler column order and every node of every RandomForest
tree. Nothing is re-trained or re-derived; the numbers are Spark's. `flight_delay_model` checks on
held-out rows that this gives the same predictions and probabilities as `transform` before it
promotes a version, so a Spark upgrade that changed the saved layout fails loudly there.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

STRING_INDEXER = "org.apache.spark.ml.feature.StringIndexerModel"
VECTOR_ASSEMBLER = "org.apache.spark.ml.feature.VectorAssembler"
RANDOM_FOREST = "org.apache.spark.ml.classification.RandomForestClassificationModel"


class UnsupportedModel(ValueError):
    pass


def _stage_metadata(stage_dir: Path) -> dict[str, Any]:
    (part,) = (stage_dir / "metadata").glob("part-*")
    return json.loads(part.read_text())


def _stage_data(stage_dir: Path, subdir: str = "data") -> list[dict[str, Any]]:
    return pq.read_table(stage_dir / subdir).to_pylist()


@dataclass(frozen=True)
class _Forest:
    """All trees of a random forest flattened into node arrays (leaves have left == -1)."""

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    categorical: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_probabilities: np.ndarray  # per node, the leaf's class counts normalized to sum 1
    left_category_keys: np.ndarray  # sorted node * category_stride + category for categorical splits
    category_stride: int
    depth: int

    @classmethod
    def from_saved_nodes(cls, rows: list[dict[str, Any]], num_classes: int) -> "_Forest":
        trees: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            trees.setdefault(row["treeID"], []).append(row["nodeData"])
        offsets, total = {}, 0
        for tree_id in sorted(trees):
            offsets[tree_id] = total
            total += len(trees[tree_id])

        feature = np.zeros(total, np.int64)
        threshold = np.zeros(total)
        categorical = np.zeros(total, bool)
        left = np.full(total, -1, np.int64)
        right = np.full(total, -1, np.int64)
        leaf_probabilities = np.zeros((total, num_classes))
        left_categories: list[tuple[int, float]] = []
        stride = 1
        for tree_id, nodes in trees.items():
            base = offsets[tree_id]
            for node in nodes:
                index = base + node["id"]
                if node["leftChild"] < 0:
                    stats = np.asarray(node["impurityStats"], float)
                    leaf_probabilities[index] = stats / stats.sum()
                    continue
                split = node["split"]
                feature[index] = split["featureIndex"]
                left[index] = base + node["leftChild"]
                right[index] = base + node["rightChild"]
                if split["numCategories"] < 0:
                    threshold[index] = split["leftCategoriesOrThreshold"][0]
                else:
                    categorical[index] = True
                    stride = max(stride, split["numCategories"] + 1)
                    left_categories += [(index, c) for c in split["leftCategoriesOrThreshold"]]
        keys = np.sort(np.array([node * stride + int(c) for node, c in left_categories], np.int64))
        return cls(
            roots=np.array([offsets[t] for t in sorted(trees)], np.int64),
            feature=feature, threshold=threshold, categorical=categorical, left=left, right=right,
            leaf_probabilities=leaf_probabilities, left_category_keys=keys, category_stride=stride,
            depth=cls._depth(left, right, [offsets[t] for t in sorted(trees)]),
        )

    @staticmethod
    def _depth(left: np.ndarray, right: np.ndarray, roots: list[int]) -> int:
        depth, frontier = 0, np.array(roots)
        while (frontier := frontier[left[frontier] >= 0]).size:
            frontier = np.concatenate([left[frontier], right[frontier]])
            depth += 1
        return depth

    def _in_left_categories(self, node: np.ndarray, category: np.ndarray) -> np.ndarray:
        keys = node * self.category_stride + category
        position = np.searchsorted(self.left_category_keys, keys)
        found = position < self.left_category_keys.size
        found[found] = self.left_category_keys[position[found]] == keys[found]
        return found

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for each row of `features`, as Spark's RandomForestClassificationModel:
        the mean over trees of each reached leaf's normalized class counts."""
        rows, trees = features.shape[0], self.roots.size
        node = np.tile(self.roots, rows)
        row = np.repeat(np.arange(rows), trees)
        for _ in range(self.depth):
            inner = np.flatnonzero(self.left[node] >= 0)
            if inner.size == 0:
                break
            at = node[inner]
            value = features[row[inner], self.feature[at]]
            is_categorical = self.categorical[at]
            category = np.where(is_categorical, value, 0).astype(np.int64)
            goes_left = np.where(is_categorical, self._in_left_categories(at, category),
                                 value <= self.threshold[at])
            node[inner] = np.where(goes_left, self.left[at], self.right[at])
        votes = self.leaf_probabilities[node].reshape(rows, trees, -1).sum(axis=1)
        return votes / votes.sum(axis=1, keepdims=True)


class PipelineScorer:
    """A saved `StringIndexer* -> VectorAssembler -> RandomForestClassifier` PipelineModel."""

    def __init__(self, columns: list[tuple[str, dict[str, int] | None]], forest: _Forest):
        # In assembler order: (input column, {category: index} for indexed columns, else None).
        self._columns = columns
        self._forest = forest

    @classmethod
    def load(cls, pipeline_dir: Path) -> "PipelineScorer":
        pipeline_dir = Path(pipeline_dir)
        stage_uids = _stage_metadata(pipeline_dir)["paramMap"]["stageUids"]
        indexers: dict[str, tuple[str, dict[str, int]]] = {}  # output column -> (input, labels)
        assembler_inputs: list[str] | None = None
        forest: _Forest | None = None
        for position, uid in enumerate(stage_uids):
            stage_dir = pipeline_dir / "stages" / f"{position}_{uid}"
            meta = _stage_metadata(stage_dir)
            params = meta["paramMap"]
            if meta["class"] == STRING_INDEXER:
                if params.get("handleInvalid") != "keep":
                    raise UnsupportedModel(f"{stage_dir.name}: only handleInvalid='keep' indexers")
                # Several columns per indexer (inputCols), or one (inputCol: models saved before).
                inputs = params.get("inputCols") or [params["inputCol"]]
                outputs = params.get("outputCols") or [params["outputCol"]]
                labels_array = _stage_data(stage_dir)[0]["labelsArray"]
                for column, output, labels in zip(inputs, outputs, labels_array, strict=True):
                    indexers[output] = (column, {label: i for i, label in enumerate(labels)})
            elif meta["class"] == VECTOR_ASSEMBLER:
                assembler_inputs = params["inputCols"]
            elif meta["class"] == RANDOM_FOREST:
                forest = _Forest.from_saved_nodes(_stage_data(stage_dir), meta["numClasses"])
            else:
                raise UnsupportedModel(f"{stage_dir.name}: stage {meta['class']} is not supported")
        if assembler_inputs is None or forest is None:
            raise UnsupportedModel(f"{pipeline_dir} needs a VectorAssembler and a RandomForest")
        return cls([indexers.get(column, (column, None)) for column in assembler_inputs], forest)

    def feature_matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The assembled feature vectors; an unseen category gets the extra "keep" index."""
        matrix = np.empty((len(rows), len(self._columns)))
        for i, row in enumerate(rows):
            for j, (column, labels) in enumerate(self._columns):
                matrix[i, j] = row[column] if labels is None else labels.get(row[column], len(labels))
        return matrix

    def probabilities(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self._forest.probabilities(self.feature_matrix(rows))
