"""Route lookups in the `origin_dest_distances` collection built by the Dagster asset."""

from pymongo.database import Database

from flight_platform.clients.mongo import DISTANCES


def get_flight_distance(database: Database, origin: str, dest: str) -> float | None:
    """Average distance in miles flown from `origin` to `dest`, or None for an unknown route."""
    route = database[DISTANCES].find_one({"Origin": origin, "Dest": dest}, {"Distance": 1})
    return route["Distance"] if route else None


def known_routes(database: Database) -> list[dict]:
    """Every route with its carriers, for the form's suggestions."""
    return list(database[DISTANCES].find(
        {}, {"_id": 0, "Origin": 1, "Dest": 1, "Distance": 1, "Carriers": 1},
    ).sort([("Origin", 1), ("Dest", 1)]))
