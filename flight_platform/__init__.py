"""flight_platform: the Dagster code location, and what the web app and the stream share."""

import warnings

# Dagster features this project chose knowing Dagster marks them beta or preview: single-run
# backfills (`backfill_policy`), partitioned asset checks, sensor owners, and the selection of
# every asset (`dg launch --assets '*'`, which Dagster's selection syntax turns into
# `AssetSelection.all(include_sources=...)`). Their notices are for whoever chooses them, so they
# are silenced here, once for every process that imports the package (matched by message:
# importing Dagster here would load it into the web app).
CHOSEN_PREVIEW_FEATURES = [
    r"Parameter `backfill_policy` of function `asset` is currently in beta",
    r"Specifying a partitions_def on an AssetCheckSpec is currently in preview",
    r"Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta",
    r"Parameter `include_sources` of function `AssetSelection.all` is currently in beta",
]
warnings.filterwarnings("ignore", message="|".join(CHOSEN_PREVIEW_FEATURES))
