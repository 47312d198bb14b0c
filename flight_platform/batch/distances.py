"""Stage 2a: the distance of every (Origin, Dest) route, served from MongoDB to the web app."""

from dagster import AssetCheckResult, MaterializeResult, MetadataValue, asset, asset_check
from dagster_pyspark import LazyPySparkResource
from pymongo import ReplaceOne
from pyspark.sql import functions as F

from flight_platform.batch.ingest import on_time_performance
from flight_platform.clients.mongo import DISTANCES, ensure_index
from flight_platform.resources import MongoResource, WarehouseResource


@asset(
    deps=[on_time_performance],
    group_name="batch",
    kinds={"spark", "mongodb"},
    description="One document per (Origin, Dest) in agile_data_science.origin_dest_distances: the "
    "mean Distance, the carriers flying it and the flight count, under a unique (Origin, Dest) "
    "index. Written by idempotent upserts; routes gone from the data are removed.",
)
def origin_dest_distances(spark: LazyPySparkResource, warehouse: WarehouseResource,
                          mongo: MongoResource) -> MaterializeResult:
    routes = (
        spark.spark_session.read.parquet(warehouse.table_path("on_time_performance"))
        .groupBy("Origin", "Dest")
        .agg(F.avg("Distance").alias("Distance"),
             F.sort_array(F.collect_set("Carrier")).alias("Carriers"),
             F.count(F.lit(1)).alias("Flights"))
        .collect()
    )
    database = mongo.get_database()
    ensure_index(database, DISTANCES)
    collection = database[DISTANCES]
    result = collection.bulk_write([
        ReplaceOne({"Origin": r["Origin"], "Dest": r["Dest"]}, r.asDict(), upsert=True)
        for r in routes
    ], ordered=False)
    current = {(r["Origin"], r["Dest"]) for r in routes}
    stale = [doc["_id"] for doc in collection.find({}, {"Origin": 1, "Dest": 1})
             if (doc["Origin"], doc["Dest"]) not in current]
    removed = collection.delete_many({"_id": {"$in": stale}}).deleted_count if stale else 0
    return MaterializeResult(metadata={
        "dagster/row_count": collection.count_documents({}),
        "routes": len(routes),
        "inserted": result.upserted_count,
        "changed": result.modified_count,
        "removed_stale": removed,
        "collection": MetadataValue.text(f"{database.name}.{DISTANCES}"),
        "index": MetadataValue.text("unique (Origin, Dest)"),
    })


@asset_check(asset=origin_dest_distances, blocking=True,
             description="Exactly one document per route, and as many as distinct (Origin, Dest) "
             "pairs in on_time_performance.")
def one_document_per_route(spark: LazyPySparkResource, warehouse: WarehouseResource,
                           mongo: MongoResource) -> AssetCheckResult:
    pairs = (spark.spark_session.read.parquet(warehouse.table_path("on_time_performance"))
             .select("Origin", "Dest").distinct().count())
    collection = mongo.get_database()[DISTANCES]
    duplicates = list(collection.aggregate([
        {"$group": {"_id": {"Origin": "$Origin", "Dest": "$Dest"}, "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}},
        {"$limit": 5},
    ]))
    documents = collection.count_documents({})
    return AssetCheckResult(
        passed=documents == pairs and not duplicates,
        metadata={"documents": documents, "distinct_pairs_in_parquet": pairs,
                  "duplicated_routes": [d["_id"] for d in duplicates] or "none"},
    )
