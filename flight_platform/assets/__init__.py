"""Software-defined assets, one module per stage: ingest -> distances, features -> model."""
