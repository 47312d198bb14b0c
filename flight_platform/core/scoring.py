"""Low-latency scoring with a saved Spark ML PipelineModel, evaluated in NumPy.

`PipelineModel.transform` costs about 0.3 s of Spark job overhead per call whatever the batch size,
and even a single-vector `predict` through py4j is a JVM round trip per row. The streaming job
needs milliseconds, so it reads the fitted model straight from the directory Spark saved: the
StringIndexer label lists, the VectorAssembler column order and every node of every RandomForest
tree. Nothing is re-trained or re-derived; the numbers are Spark's. `flight_delay_model` checks on
held-out rows that this gives the same predictions and probabilities as `transform` before it
promotes a version, so a Spark upgrade that changed the saved layout fails loudly there.

The same walk explains each answer (`PipelineScorer.explain`): every node of a tree holds the
class distribution of the training rows that reached it, so a tree's prediction is its root's
distribution plus, along the path, each split's change of distribution, credited to the split's
feature (Saabas' decomposition). Averaged over the trees, the forest's base rates plus the sum of
the contributions is the probability served (to float rounding). A contribution says what the model
associates with a value, not what causes a delay.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from flight_platform.core.contract import Scored, explanation_documents

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
    # Per node, the class counts of the training rows that reached it, normalized to sum 1: at a
    # leaf the tree's prediction, at a split the starting point of its contribution.
    node_probabilities: np.ndarray
    # Per node but a root, what reaching it adds to its parent's probabilities, and the parent's
    # split feature, credited with that change.
    change_from_parent: np.ndarray
    credited_feature: np.ndarray
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
        node_probabilities = np.zeros((total, num_classes))
        left_categories: list[tuple[int, float]] = []
        stride = 1
        for tree_id, nodes in trees.items():
            base = offsets[tree_id]
            for node in nodes:
                index = base + node["id"]
                stats = np.asarray(node["impurityStats"], float)
                node_probabilities[index] = stats / stats.sum()
                if node["leftChild"] < 0:
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
        parent = np.arange(total)  # a root is its own parent: no change, credited to nothing
        splits = np.flatnonzero(left >= 0)
        parent[left[splits]] = parent[right[splits]] = splits
        return cls(
            roots=np.array([offsets[t] for t in sorted(trees)], np.int64),
            feature=feature, threshold=threshold, categorical=categorical, left=left, right=right,
            node_probabilities=node_probabilities,
            change_from_parent=node_probabilities - node_probabilities[parent],
            credited_feature=feature[parent], left_category_keys=keys, category_stride=stride,
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

    def _leaves(self, features: np.ndarray, steps: list | None = None) -> np.ndarray:
        """The leaf each row of `features` reaches in each tree (row-major: row, then tree). With
        `steps`, appends to it the (row, child) arrays of every split taken, level by level."""
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
            if steps is not None:
                steps.append((row[inner], node[inner]))
        return node

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for each row of `features`, as Spark's RandomForestClassificationModel:
        the mean over trees of each reached leaf's normalized class counts."""
        return self._mean_over_trees(self.node_probabilities[self._leaves(features)])

    def _mean_over_trees(self, per_tree: np.ndarray) -> np.ndarray:
        votes = per_tree.reshape(-1, self.roots.size, per_tree.shape[-1]).sum(axis=1)
        return votes / votes.sum(axis=1, keepdims=True)

    def explain(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities as `probabilities` gives them, base rates per class, contributions per
        row, feature and class), where base rates + the sum of a row's contributions = its
        probabilities. One walk down the trees gives both."""
        steps: list[tuple[np.ndarray, np.ndarray]] = []
        leaves = self._leaves(features, steps)
        rows, features_count = features.shape
        classes = self.node_probabilities.shape[1]
        slots = rows * features_count  # one per (row, feature)
        contributions = np.zeros((slots, classes))
        if steps:
            row, child = (np.concatenate(arrays) for arrays in zip(*steps, strict=True))
            slot = row * features_count + self.credited_feature[child]
            change = self.change_from_parent[child]
            for k in range(classes):  # bincount sums the steps of each slot, faster than np.add.at
                contributions[:, k] = np.bincount(slot, weights=change[:, k], minlength=slots)
        base_rates = self.node_probabilities[self.roots].mean(axis=0)
        return (self._mean_over_trees(self.node_probabilities[leaves]), base_rates,
                contributions.reshape(rows, features_count, classes) / self.roots.size)


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

    def explain(self, rows: Sequence[Mapping[str, Any]]) -> "Explained":
        """The rows' probabilities (as `probabilities` gives them) and why, per request field:
        an indexed column is credited to the field it indexes (Carrier_index to Carrier)."""
        probabilities, base_rates, contributions = self._forest.explain(self.feature_matrix(rows))
        return Explained([column for column, _ in self._columns], probabilities, base_rates,
                         contributions)

    def score(self, rows: Sequence[Mapping[str, Any]], explain: bool = True) -> list[Scored]:
        """Each row's answer as the response documents hold it: probabilities, and why if `explain`."""
        if not explain:
            return [Scored(p) for p in self.probabilities(rows).tolist()]
        explained = self.explain(rows)
        return [Scored(p, e) for p, e in zip(explained.probabilities.tolist(), explanation_documents(
            explained.fields, explained.base_rates, explained.contributions, explained.probabilities),
            strict=True)]


@dataclass(frozen=True)
class Explained:
    """Scored rows and their explanation: for every row and class,
    probabilities[row, class] == base_rates[class] + contributions[row, :, class].sum()."""

    fields: list[str]  # the request field of each contribution
    probabilities: np.ndarray  # row, class
    base_rates: np.ndarray  # class: the forest's prediction before any split (its training mix)
    contributions: np.ndarray  # row, field, class
