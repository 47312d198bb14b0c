"""The streaming scorer gives exactly what Spark's `PipelineModel.transform` gives, on real rows
built the way the web app builds requests, and on carriers/airports/routes the model never saw."""

import random

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import RandomForestClassifier
from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.sql import SparkSession

from flight_platform.core.contract import PredictionRequest
from flight_platform.core.features import ARRIVAL_DELAY_LABELS, CATEGORICAL_FEATURES, NUMERIC_FEATURES
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer, UnsupportedModel, _Forest
from flight_platform.resources import build_resources

SAMPLE_ROWS = 3000


@pytest.fixture(scope="module")
def spark(running_services, settings):
    """A session on the suite's Spark Connect server."""
    session = SparkSession.builder.remote(settings.spark_remote).create()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def current_pipeline_dir(materialized, settings):
    store = ModelStore(settings.model_store_dir)
    return store.pipeline_dir(store.current_version())


def serving_rows(spark, settings) -> list[dict]:
    """Held-in and unseen rows as the serving side sees them: requests built from the user's six
    fields plus the route distance, with the shared date-feature code."""
    features = spark.read.parquet(
        build_resources(settings)["warehouse"].table_path("flight_delay_features"))
    sample = features.sample(fraction=0.02, seed=11).limit(SAMPLE_ROWS).collect()
    requests = [PredictionRequest.create(
        Carrier=r["Carrier"], FlightDate=r["FlightDate"].isoformat(), FlightNum=str(r["FlightNum"]),
        Origin=r["Origin"], Dest=r["Dest"], DepDelay=r["DepDelay"], Distance=r["Distance"])
        for r in sample]
    rng = random.Random(5)
    unseen = [PredictionRequest.create(
        Carrier=rng.choice(["ZZ", "AA", "Q9"]), FlightDate="2014-02-0" + str(rng.randint(1, 9)),
        FlightNum="1", Origin=rng.choice(["QQQ", "JFK"]), Dest=rng.choice(["XYZ", "ATL", "SFO"]),
        DepDelay=float(rng.randint(-30, 300)), Distance=float(rng.randint(80, 3000)))
        for _ in range(200)]
    return [r.model_input() for r in requests + unseen]


def test_scorer_matches_pipeline_model_transform(spark, settings, current_pipeline_dir):
    rows = serving_rows(spark, settings)
    frame = spark.createDataFrame(
        [[row[c] for c in CATEGORICAL_FEATURES] + [float(row[c]) for c in NUMERIC_FEATURES]
         for row in rows],
        schema=", ".join([f"{c} string" for c in CATEGORICAL_FEATURES]
                         + [f"{c} double" for c in NUMERIC_FEATURES]))
    expected = (PipelineModel.load(str(current_pipeline_dir)).transform(frame)
                .select("prediction", "probability").collect())

    probabilities = PipelineScorer.load(current_pipeline_dir).probabilities(rows)

    assert len(expected) == len(rows) > SAMPLE_ROWS * 0.9
    predicted = [int(p.argmax()) for p in probabilities]
    assert predicted == [int(r["prediction"]) for r in expected]
    assert len(set(predicted)) > 1, "a constant model would make this comparison meaningless"
    for ours, spark_row in zip(probabilities, expected, strict=True):
        assert ours == pytest.approx(spark_row["probability"].toArray(), abs=1e-12)


def test_scorer_refuses_a_pipeline_it_cannot_reproduce(spark, tmp_path):
    """An indexer that errors on unseen values would make serving diverge from training."""
    frame = spark.createDataFrame([("AA", 1.0, 0.0), ("DL", 2.0, 1.0), ("UA", 3.0, 0.0)],
                                  "Carrier string, DepDelay double, label double")
    pipeline = Pipeline(stages=[
        StringIndexer(inputCol="Carrier", outputCol="Carrier_index", handleInvalid="error"),
        VectorAssembler(inputCols=["DepDelay", "Carrier_index"], outputCol="features"),
        RandomForestClassifier(numTrees=2, maxDepth=2),
    ])
    pipeline.fit(frame).write().save(str(tmp_path / "pipeline"))

    with pytest.raises(UnsupportedModel, match="handleInvalid='keep'"):
        PipelineScorer.load(tmp_path / "pipeline")


def test_scorer_reads_models_saved_with_one_indexer_per_column(spark, tmp_path):
    """Versions trained before the indexers became one multi-column stage still serve exactly."""
    rng = random.Random(3)
    rows = [{"Carrier": rng.choice(["AA", "DL", "UA"]), "Origin": rng.choice(["JFK", "LGA", "EWR"]),
             "DepDelay": float(rng.randint(-20, 120))} for _ in range(300)]
    schema = "Carrier string, Origin string, DepDelay double"
    training = spark.createDataFrame(
        [(*r.values(), float(r["DepDelay"] > 30) + float(r["Carrier"] == "DL")) for r in rows],
        schema + ", label double")
    model = Pipeline(stages=[
        StringIndexer(inputCol="Carrier", outputCol="Carrier_index", handleInvalid="keep"),
        StringIndexer(inputCol="Origin", outputCol="Origin_index", handleInvalid="keep"),
        VectorAssembler(inputCols=["DepDelay", "Carrier_index", "Origin_index"],
                        outputCol="features"),
        RandomForestClassifier(numTrees=3, maxDepth=4, seed=1),
    ]).fit(training)
    model.write().save(str(tmp_path / "pipeline"))
    served = rows[:50] + [{"Carrier": "ZZ", "Origin": "QQQ", "DepDelay": 45.0}]
    expected = model.transform(spark.createDataFrame([tuple(r.values()) for r in served], schema)
                               ).select("probability").collect()

    probabilities = PipelineScorer.load(tmp_path / "pipeline").probabilities(served)

    assert len({int(p.argmax()) for p in probabilities}) > 1
    for ours, spark_row in zip(probabilities, expected, strict=True):
        assert ours == pytest.approx(spark_row["probability"].toArray(), abs=1e-12)


def test_explanations_add_up_to_the_served_probabilities_on_real_requests(spark, settings,
                                                                         current_pipeline_dir):
    scorer = PipelineScorer.load(current_pipeline_dir)
    rows = serving_rows(spark, settings)

    explained = scorer.explain(rows)

    assert sorted(explained.fields) == sorted([*CATEGORICAL_FEATURES, *NUMERIC_FEATURES])
    assert (explained.probabilities == scorer.probabilities(rows)).all()  # the same walk
    added_up = explained.base_rates + explained.contributions.sum(axis=1)
    assert np.abs(added_up - explained.probabilities).max() < 1e-9
    assert np.abs(explained.contributions).max() > 0.01  # a constant model would explain nothing
    for scored, probabilities in zip(scorer.score(rows), explained.probabilities, strict=True):
        assert scored.probabilities == probabilities.tolist()
        assert scored.explanation["BaseProbability"] == round(
            explained.base_rates[int(probabilities.argmax())], 6)


def test_a_later_departure_is_credited_to_the_departure_delay(current_pipeline_dir):
    scorer = PipelineScorer.load(current_pipeline_dir)
    on_time, late = (PredictionRequest.create(
        Carrier="DL", FlightDate="2013-06-21", FlightNum="1519", Origin="JFK", Dest="ATL",
        DepDelay=delay, Distance=760.0).model_input() for delay in (0.0, 120.0))

    explained = scorer.explain([on_time, late])

    very_late = ARRIVAL_DELAY_LABELS.index("Very late (30+ min)")
    toward_very_late = dict(zip(explained.fields, explained.contributions[:, :, very_late].T,
                                strict=True))
    assert explained.probabilities[1, very_late] > explained.probabilities[0, very_late] + 0.3
    assert toward_very_late["DepDelay"][1] > toward_very_late["DepDelay"][0] + 0.3


def saved_tree(nodes: list[dict]) -> list[dict]:
    """Nodes of one tree as Spark saves them (only the fields the scorer reads)."""
    return [{"treeID": 0, "nodeData": {"leftChild": -1, "rightChild": -1, "split": None, **node}}
            for node in nodes]


def test_a_one_tree_forest_is_explained_as_worked_out_by_hand():
    """Carrier (categorical, AA -> 0, DL -> 1) splits first, then DepDelay at 10 minutes. Class
    counts: root 4/2/1/1; AA 4/0/0/0; DL 0/2/1/1, and below DL: <= 10 min 0/2/0/0, later 0/0/1/1."""
    forest = _Forest.from_saved_nodes(saved_tree([
        {"id": 0, "impurityStats": [4, 2, 1, 1], "leftChild": 1, "rightChild": 2,
         "split": {"featureIndex": 1, "leftCategoriesOrThreshold": [0.0], "numCategories": 3}},
        {"id": 1, "impurityStats": [4, 0, 0, 0]},
        {"id": 2, "impurityStats": [0, 2, 1, 1], "leftChild": 3, "rightChild": 4,
         "split": {"featureIndex": 0, "leftCategoriesOrThreshold": [10.0], "numCategories": -1}},
        {"id": 3, "impurityStats": [0, 2, 0, 0]},
        {"id": 4, "impurityStats": [0, 0, 1, 1]},
    ]), num_classes=4)
    scorer = PipelineScorer([("DepDelay", None), ("Carrier", {"AA": 0, "DL": 1})], forest)

    explained = scorer.explain([{"Carrier": "DL", "DepDelay": 45.0}, {"Carrier": "DL", "DepDelay": 5.0},
                                {"Carrier": "AA", "DepDelay": 45.0}])

    assert explained.fields == ["DepDelay", "Carrier"]
    assert explained.base_rates == pytest.approx([0.5, 0.25, 0.125, 0.125])
    # DL late: DL moves 4/2/1/1 to 0/2/1/1, then 45 min moves that to 0/0/1/1.
    assert explained.contributions[0] == pytest.approx(np.array(
        [[0, -0.5, 0.25, 0.25], [-0.5, 0.25, 0.125, 0.125]]))
    assert explained.probabilities[0] == pytest.approx([0, 0, 0.5, 0.5])
    # Only DepDelay differs: its contribution moves, the carrier's (split above it) does not.
    assert explained.contributions[1] == pytest.approx(np.array(
        [[0, 0.5, -0.25, -0.25], [-0.5, 0.25, 0.125, 0.125]]))
    # AA stops at the first split: DepDelay is never asked, so it gets nothing.
    assert explained.contributions[2] == pytest.approx(np.array(
        [[0, 0, 0, 0], [0.5, -0.25, -0.125, -0.125]]))
