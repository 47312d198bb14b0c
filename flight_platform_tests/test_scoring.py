"""The streaming scorer gives exactly what Spark's `PipelineModel.transform` gives, on real rows
built the way the web app builds requests, and on carriers/airports/routes the model never saw."""

import random

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import RandomForestClassifier
from pyspark.ml.feature import StringIndexer, VectorAssembler

from flight_platform.core.contract import PredictionRequest
from flight_platform.core.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from flight_platform.core.model_store import ModelStore
from flight_platform.core.scoring import PipelineScorer, UnsupportedModel
from flight_platform.resources import build_resources, spark_resource

SAMPLE_ROWS = 3000


@pytest.fixture(scope="module")
def spark(settings):
    # The platform's own Spark settings; getOrCreate shares the session's in-process JVM.
    return spark_resource(settings).spark_session


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
