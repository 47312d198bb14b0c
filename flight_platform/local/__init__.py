"""What `make run` starts on one machine: the local broker and Mongo-protocol server, and the
whole stack (services, materialization, Dagster UI, web app)."""
