"""Clients of the outside services (Kafka, MongoDB) tuned for the prediction path. No Dagster and
no Spark imports: the web app uses them too."""
