"""Feature definitions shared by training (Spark assets) and serving (web + streaming scorer).

Pure Python, no Spark or Dagster imports: the web app imports this module. Each rule exists once;
the Spark side applies these functions to the distinct dates/routes and joins the result.
"""

import datetime as dt
import math

# The label: arrival delay in minutes bucketed with Spark's Bucketizer semantics
# (bucket i holds splits[i] <= ArrDelay < splits[i + 1]).
ARRIVAL_DELAY_SPLITS = [-math.inf, -15.0, 0.0, 30.0, math.inf]
ARRIVAL_DELAY_LABELS = [
    "Early (15+ min)",
    "Slightly early (0–15 min)",
    "Slightly late (0–30 min)",
    "Very late (30+ min)",
]

# Model inputs, all present in a prediction request (see flight_platform.core.contract).
CATEGORICAL_FEATURES = ["Carrier", "Origin", "Dest", "Route"]
NUMERIC_FEATURES = ["DepDelay", "Distance", "DayOfMonth", "DayOfWeek", "DayOfYear"]


def date_features(flight_date: dt.date) -> dict[str, int]:
    """Calendar features of a flight date.

    DayOfWeek follows the BTS on-time convention: Monday=1 ... Sunday=7 (ISO). Python's
    `date.weekday()` (Monday=0) and Spark's `dayofweek()` (Sunday=1) both differ; a mismatch
    between training and serving silently shifts every prediction's weekday.
    """
    return {
        "DayOfMonth": flight_date.day,
        "DayOfWeek": flight_date.isoweekday(),
        "DayOfYear": flight_date.timetuple().tm_yday,
    }


def route(origin: str, dest: str) -> str:
    return f"{origin}-{dest}"
