import datetime as dt

import pytest

from flight_platform.core.features import (
    ARRIVAL_DELAY_LABELS,
    ARRIVAL_DELAY_SPLITS,
    date_features,
    route,
)


@pytest.mark.parametrize("day, expected", [
    # 2013-01-01 was a Tuesday; BTS counts Monday=1 ... Sunday=7.
    (dt.date(2013, 1, 1), {"DayOfMonth": 1, "DayOfWeek": 2, "DayOfYear": 1}),
    (dt.date(2013, 1, 6), {"DayOfMonth": 6, "DayOfWeek": 7, "DayOfYear": 6}),
    (dt.date(2013, 1, 7), {"DayOfMonth": 7, "DayOfWeek": 1, "DayOfYear": 7}),
    (dt.date(2016, 12, 31), {"DayOfMonth": 31, "DayOfWeek": 6, "DayOfYear": 366}),
])
def test_date_features(day, expected):
    assert date_features(day) == expected


def test_route():
    assert route("JFK", "ATL") == "JFK-ATL"


def test_one_label_per_delay_bucket():
    assert len(ARRIVAL_DELAY_LABELS) == len(ARRIVAL_DELAY_SPLITS) - 1
