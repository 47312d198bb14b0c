"""The known routes (the `origin_dest_distances` asset) held in memory by each web worker.

Every POST needs its route's distance: read from MongoDB, that is a round trip to the server the
stream writes every answer to. The table is a few hundred routes, so each worker keeps all of it
and reads it again only when it may have changed: when a route is not found (a new month may have
added it), at most every MISS_RELOAD_S, and at least every MAX_AGE_S (a materialization may have
changed a distance).
"""

import threading
import time
from collections.abc import Callable

MISS_RELOAD_S = 2.0
MAX_AGE_S = 60.0


class RouteTable:
    def __init__(self, load: Callable[[], list[dict]], clock: Callable[[], float] = time.monotonic):
        """`load` returns every route as `clients.mongo.known_routes` does (Origin, Dest,
        Distance, Carriers); `clock` is injectable for tests."""
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._routes: list[dict] = []
        self._distances: dict[tuple[str, str], float] = {}
        self._loaded_at: float | None = None

    def _reload_if_older_than(self, age_s: float) -> None:
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= age_s:
                routes = self._load()  # a failure propagates: the app answers 503
                self._routes = routes
                self._distances = {(r["Origin"], r["Dest"]): r["Distance"] for r in routes}
                self._loaded_at = now

    def distance(self, origin: str, dest: str) -> float | None:
        """The route's distance in miles, or None if the asset has no such route."""
        self._reload_if_older_than(MAX_AGE_S)
        if (origin, dest) not in self._distances:
            self._reload_if_older_than(MISS_RELOAD_S)
        return self._distances.get((origin, dest))

    def routes(self) -> list[dict]:
        """Every route with its carriers, for the form's suggestions."""
        self._reload_if_older_than(MAX_AGE_S)
        return self._routes
