"""MongoDB collections of the platform, the indexes each one relies on, and the route lookups shared
by the web app and the replay tool."""

from collections.abc import Iterator, Sequence

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from flight_platform.clients.security import CredentialError, MongoSecurity, Role
from flight_platform.settings import Settings

DISTANCES = "origin_dest_distances"
DISTANCE_PARTIALS = "origin_dest_distance_partials"  # per month and route: miles, flights, carriers
RESPONSES = "flight_delay_classification_response"
DEAD_LETTERS = "flight_delay_classification_dead_letter"
# The web app's own state, the rate limit's counts shared by its workers, is in a database of its
# own (see `web_database`): the web user only reads the platform's.
RATE_LIMIT_COUNTERS = "rate_limit_counters"
RATE_LIMIT_WINDOWS = "rate_limit_windows"

# Unique keys make every writer idempotent: re-running an upsert or re-delivering a request can
# never create a second document for the same route or request. Responses and dead letters use
# `_id` itself as the key (the request UUID; topic:partition:offset): its built-in unique index
# gives the same guarantee as a second unique index, at a quarter of the insert cost on the local
# Mongo-protocol server (about 10,500 vs 3,200 docs/s).
INDEXES = {
    DISTANCES: [("Origin", ASCENDING), ("Dest", ASCENDING)],
    DISTANCE_PARTIALS: [("Origin", ASCENDING), ("Dest", ASCENDING), ("Month", ASCENDING)],
}

DUPLICATE_KEY = 11000
UNAUTHORIZED = 13  # an anonymous client, or a user without the role for the command
AUTHENTICATION_FAILED = 18  # an unknown user or a wrong password
# The local Mongo-protocol server's cost of an `_id` `$in` query grows with the square of the list
# (measured: 100 ids 0.02 s, 1,000 ids 1.3 s, 5,000 ids 28 s), so ids are looked up in small lists.
IDS_PER_QUERY = 100


def web_database(database: str) -> str:
    """The database of the web app's own state beside the platform's `database`. A database of its
    own, because roles on the local server are per database: the web user writes this one and
    only reads the platform's."""
    return f"{database}_web"


def create_client(settings: Settings, role: Role, timeout_ms: int = 5000) -> MongoClient:
    """A client of settings.mongo_uri logged in as `role`'s user (CredentialError if its password
    is nowhere to be found). It connects on first use."""
    return connect(settings.mongo_uri, settings.mongo_security, role, timeout_ms)


def connect(uri: str, security: MongoSecurity, role: Role, timeout_ms: int = 5000) -> MongoClient:
    """A client of `uri` logged in as `role`'s user of `security`. TLS and other options come
    from the URI; the credentials never do, so the URI can be printed."""
    return MongoClient(uri, **security.client_options(role), serverSelectionTimeoutMS=timeout_ms,
                       connectTimeoutMS=timeout_ms, tz_aware=True)


def login_refused(error: BaseException) -> bool:
    return isinstance(error, OperationFailure) and error.code == AUTHENTICATION_FAILED


def explain(error: PyMongoError, security: MongoSecurity, role: Role) -> str:
    """`error` in a sentence for an operator: a refused login names the user and the settings that
    give it and its password (never the password itself)."""
    if login_refused(error):
        return (f"MongoDB refused the login of {security.describe(role)}, checked against the "
                f"{security.auth_source!r} database (FLIGHT_PLATFORM_MONGO_AUTH_SOURCE): the user "
                f"does not exist there or its password differs")
    return f"{type(error).__name__}: {error}"


def check_login(client: MongoClient, security: MongoSecurity, role: Role) -> None:
    """Ping as `role`: CredentialError, naming the user and its settings, if the login is refused;
    any other failure (the server is down) propagates as it is."""
    try:
        client.admin.command("ping")
    except OperationFailure as error:
        if login_refused(error):
            raise CredentialError(explain(error, security, role)) from None
        raise


def ensure_index(database: Database, collection: str) -> None:
    database[collection].create_index(INDEXES[collection], unique=True)


def find_by_ids(collection: Collection, ids: Sequence[str], projection: dict | None = None
                ) -> Iterator[dict]:
    """The documents of `collection` whose `_id` is one of `ids` (answers, by request UUID)."""
    for start in range(0, len(ids), IDS_PER_QUERY):
        yield from collection.find({"_id": {"$in": list(ids[start:start + IDS_PER_QUERY])}}, projection)


def count_by_ids(collection: Collection, ids: Sequence[str]) -> int:
    return sum(1 for _ in find_by_ids(collection, ids, {"_id": 1}))


def ping(settings: Settings, role: Role, timeout_ms: int = 2000) -> str | None:
    """None if the server answers a real `ping` command from `role`'s user, else why not (a
    refused login names the user and its settings; no message holds a password)."""
    try:
        client = create_client(settings, role, timeout_ms)
    except CredentialError as error:
        return str(error)
    try:
        client.admin.command("ping")
        return None
    except PyMongoError as error:
        return explain(error, settings.mongo_security, role)
    finally:
        client.close()


def get_flight_distance(database: Database, origin: str, dest: str) -> float | None:
    """Average distance in miles flown from `origin` to `dest` (the `origin_dest_distances` asset),
    or None for an unknown route."""
    route = database[DISTANCES].find_one({"Origin": origin, "Dest": dest}, {"Distance": 1})
    return route["Distance"] if route else None


def find_answers_for_months(database: Database, months: list[str], fields: list[str]) -> list[dict]:
    """`fields` of every stored answer for a flight of `months` ('YYYY-MM'). A scan: an index on
    FlightDate would slow every insert of the stream (a second unique index cost it 3x), to save a
    monthly batch a few seconds."""
    dates = [{"FlightDate": {"$gte": f"{month}-01", "$lte": f"{month}-31"}} for month in months]
    return list(database[RESPONSES].find({"$or": dates}, dict.fromkeys(fields, 1)))


def known_routes(database: Database) -> list[dict]:
    """Every route with its carriers, for the form's suggestions."""
    return list(database[DISTANCES].find(
        {}, {"_id": 0, "Origin": 1, "Dest": 1, "Distance": 1, "Carriers": 1},
    ).sort([("Origin", 1), ("Dest", 1)]))
