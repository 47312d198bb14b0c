"""Operator jobs that choose what the stream serves: promote a version to champion, add or remove
challengers. Launched from the Dagster UI's launchpad (or `dg launch --job <name> -c <config>`); each only
rewrites the model store's small `current` / `challengers` files, and the stream supervisor rolls
the change out on its next tick.
"""

from dagster import Config, Failure, OpExecutionContext, job, op
from pydantic import Field

from flight_platform.core.model_store import ModelStore
from flight_platform.resources import ModelStoreResource


class PromoteModelConfig(Config):
    version: str = Field(description="The saved model version to serve, usually a challenger.")


class ChallengersConfig(Config):
    add: list[str] = Field(default=[], description="Versions to score beside the champion.")
    remove: list[str] = Field(default=[], description="Challengers to stop scoring.")


def _require_saved(store: ModelStore, versions: list[str]) -> None:
    unknown = [v for v in versions if v not in store.versions()]
    if unknown:
        raise Failure(f"No saved model version {', '.join(unknown)}; saved versions: "
                      f"{', '.join(store.versions()) or 'none'}.")


@op(description="Make the configured version the champion (it stops being a challenger).")
def promote_version(context: OpExecutionContext, config: PromoteModelConfig,
                    model_store: ModelStoreResource) -> None:
    store = model_store.store()
    _require_saved(store, [config.version])
    previous = store.current_version()
    store.promote(config.version, f"promoted by a person (run {context.run_id})",
                  probation=model_store.probation)
    on_probation = ", on probation as a challenger" if store.on_probation() else ""
    context.log.info(f"Model {config.version} is the champion (was {previous}{on_probation}); the "
                     f"stream supervisor rolls it out.")


@op(description="Add and remove challengers; the newest max_challengers are kept.")
def update_challengers(context: OpExecutionContext, config: ChallengersConfig,
                       model_store: ModelStoreResource) -> None:
    store = model_store.store()
    _require_saved(store, config.add)
    if store.current_version() in config.add:
        raise Failure(f"Model {store.current_version()} is the champion, not a challenger.")
    for version in config.remove:
        store.remove_challenger(version)
    for version in config.add:
        displaced = store.add_challenger(version, keep=model_store.max_challengers)
        if displaced:
            context.log.warning(f"Challengers are limited to {model_store.max_challengers}: "
                                f"{', '.join(displaced)} no longer scored.")
    context.log.info(f"Challengers now: {', '.join(store.challengers()) or 'none'}.")


@job(tags={"flight_platform/role": "model-roles"},
     description="Promote a saved model version (usually a challenger) to champion.")
def promote_model():
    promote_version()


@job(tags={"flight_platform/role": "model-roles"},
     description="Choose the challenger models scored in the champion's shadow.")
def manage_challengers():
    update_challengers()
