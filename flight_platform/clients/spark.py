"""The Spark Connect server (`sc://host:port`) every batch run works on, each in a session of its
own (see flight_platform.resources and flight_platform.local.services)."""

from urllib.parse import urlparse

from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import DefaultPolicy


def retry_policy(retries: int) -> DefaultPolicy:
    """A call retries `retries` times while the server is unreachable, waiting 50 ms, 0.2, 0.8,
    3.2, then 5 s each time (6: ~15 s): through a network blip, but a step on a dead server fails
    in seconds rather than after pyspark's default ten minutes. (A restarted server holds none of
    the old sessions: going on after a restart is the run's retry, not the call's.)"""
    return DefaultPolicy(max_retries=retries, initial_backoff=50, max_backoff=5000)


def server_reachable(remote: str) -> bool:
    """Whether the server at `remote` answers a real request (its Spark version) right now."""
    try:
        session = SparkSession.builder.remote(remote).create()
    except Exception:  # noqa: BLE001 - any failure to connect means "not reachable"
        return False
    session.client.set_retry_policies([DefaultPolicy(max_retries=0)])
    try:
        return bool(session.version)
    except Exception:  # noqa: BLE001
        return False
    finally:
        session.stop()


def endpoint(remote: str) -> tuple[str, int]:
    """(host, port) of a `sc://host:port` address."""
    parsed = urlparse(remote)
    return parsed.hostname or "127.0.0.1", parsed.port or 15002
