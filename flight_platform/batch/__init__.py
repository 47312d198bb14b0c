"""The batch side: Dagster software-defined assets on Spark, one module per stage
(ingest -> distances, features -> model), and the BTS on-time schema they share."""
