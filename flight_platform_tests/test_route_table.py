"""The web app's in-memory route table: when it reads the routes again (no services needed)."""

from web.route_table import MAX_AGE_S, MISS_RELOAD_S, RouteTable

JFK_ATL = {"Origin": "JFK", "Dest": "ATL", "Distance": 760.0, "Carriers": ["DL"]}
JFK_SFO = {"Origin": "JFK", "Dest": "SFO", "Distance": 2586.0, "Carriers": ["B6"]}


class Asset:
    """The routes as the asset holds them, counting how often they are read."""

    def __init__(self, *routes: dict):
        self.routes = list(routes)
        self.reads = 0

    def load(self) -> list[dict]:
        self.reads += 1
        return list(self.routes)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_known_routes_are_answered_from_memory():
    asset, clock = Asset(JFK_ATL), Clock()
    table = RouteTable(asset.load, clock)
    assert [table.distance("JFK", "ATL") for _ in range(100)] == [760.0] * 100
    assert table.routes() == [JFK_ATL]
    assert asset.reads == 1


def test_an_unknown_route_reads_the_routes_again_at_most_every_few_seconds():
    asset, clock = Asset(JFK_ATL), Clock()
    table = RouteTable(asset.load, clock)
    assert table.distance("JFK", "SFO") is None and asset.reads == 1
    asset.routes.append(JFK_SFO)  # a new month added it
    clock.now += MISS_RELOAD_S / 2
    assert table.distance("JFK", "SFO") is None and asset.reads == 1  # a flood of misses reads once
    clock.now += MISS_RELOAD_S
    assert table.distance("JFK", "SFO") == 2586.0 and asset.reads == 2


def test_a_changed_distance_is_served_once_the_table_is_old():
    asset, clock = Asset(JFK_ATL), Clock()
    table = RouteTable(asset.load, clock)
    assert table.distance("JFK", "ATL") == 760.0
    asset.routes = [{**JFK_ATL, "Distance": 762.0}]  # materialized again
    clock.now += MAX_AGE_S - 1
    assert table.distance("JFK", "ATL") == 760.0
    clock.now += 1
    assert table.distance("JFK", "ATL") == 762.0 and asset.reads == 2
