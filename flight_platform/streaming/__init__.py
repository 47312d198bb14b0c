"""The streaming side: the long-lived Dagster job, the sensor that supervises it, and the
Kafka -> score -> MongoDB worker it runs (the worker itself has no Dagster inside)."""
