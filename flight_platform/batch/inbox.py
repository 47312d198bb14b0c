"""The sensor on the BTS inbox (data/bts/): a new or replaced monthly download materializes exactly
its month of `on_time_performance` (features and distances follow by declarative automation).

The cursor remembers each file's size and modification time, so a file is looked at again only
when it changes, and a restarted daemon does not request what was done. A month is requested only
if the file is newer than the month's latest materialization, so the months `make run` has just
materialized are not done twice. A file that cannot be read is reported (in the skip reason and the
sensor's log) and remembered until it changes; the other files go on.
"""

import json
from pathlib import Path

from dagster import (
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from flight_platform.batch.ingest import on_time_performance
from flight_platform.batch.sources import bts_file_month, find_bts_files, flight_months
from flight_platform.resources import WarehouseResource


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def last_materialized(context: SensorEvaluationContext, month: str) -> float | None:
    """When the month's on-time partition was last materialized (epoch seconds), if ever."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=on_time_performance.key, asset_partitions=[month]),
        limit=1).records
    return records[0].timestamp if records else None


def look_in_inbox(context: SensorEvaluationContext, warehouse: WarehouseResource):
    """One tick of the inbox sensor."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(flight_months.name))
    new_months: list[str] = []
    requests: dict[str, RunRequest] = {}  # one run per month, however many of its files changed
    problems: list[str] = []
    for path in find_bts_files(Path(warehouse.bts_dir)):
        stamp = fingerprint(path)
        if seen.get(path.name) == stamp:
            continue
        seen[path.name] = stamp
        try:
            month = bts_file_month(path)
        except ValueError as error:
            problems.append(str(error))
            context.log.warning(f"Skipping {path.name}: {error}")
            continue
        if month not in known and month not in new_months:
            new_months.append(month)
        done_at = last_materialized(context, month)
        if done_at is None or done_at < path.stat().st_mtime:
            requests[month] = RunRequest(run_key=f"{path.name}:{stamp}", partition_key=month,
                                         tags={"flight_platform/bts_file": path.name})
    context.update_cursor(json.dumps(seen, sort_keys=True))
    if not requests and not new_months:
        return SkipReason("Unreadable BTS files: " + "; ".join(problems) if problems
                          else "No new or changed BTS files.")
    return SensorResult(run_requests=list(requests.values()),
                        dynamic_partitions_requests=[flight_months.build_add_request(new_months)]
                        if new_months else None)


def bts_inbox_sensor(interval_s: int) -> SensorDefinition:
    return sensor(
        name="bts_inbox_sensor",
        asset_selection=[on_time_performance],
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Watches the BTS inbox: a new or replaced monthly download registers its month "
        "as a partition and materializes it; unreadable files are reported and skipped.",
    )(look_in_inbox)
