"""The web app's own defences: security headers on every answer, a per-client rate limit on the POST
endpoints shared by every gunicorn worker, and the client's address from X-Forwarded-For only behind
proxies the settings trust."""

import sys

from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import MongoDBStorage
from pymongo import MongoClient
from werkzeug.middleware.proxy_fix import ProxyFix

from flight_platform.clients import mongo
from flight_platform.clients.security import Role
from flight_platform.settings import Settings

# The page loads its script and stylesheet from /static and fetches JSON from this app only; it
# has no inline script, style or event handler, so none is allowed: injected markup cannot run.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'",
    "object-src 'none'"])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # a JSON answer is never run as a script or shown as HTML
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers that predate it
    # The page needs no Referer: it fetches only from this app and links nowhere.
    "Referrer-Policy": "no-referrer",
}
# When MongoDB does not answer within this, each worker counts in memory until it is back: the page
# keeps working (its routes are in memory) and every worker still limits each client.
RATE_LIMIT_STORAGE_TIMEOUT_MS = 1000


class WebUserMongoStorage(MongoDBStorage):
    """flask-limiter's MongoDB storage, shared by every worker, connected as the app's own client is:
    to settings.mongo_uri as the web user, on first use (so an app started before its password
    exists recovers). The state is in the web app's own database (`mongo.web_database`), the one
    the web user may write: it only reads the platform's.

    The moving window is the strategy SecantusDB serves correctly: the fixed window's reset
    compares dates with $$NOW, which it gets wrong, and the sliding window counter fails there.
    It keeps a timestamp per request in the client's window, so its cost grows with the limit: on
    SecantusDB about 1.2 ms of server CPU per POST at 10 or 100 per second, 2.75 ms at 1,000 for
    a client posting that fast (measured 2026-12-04)."""

    STORAGE_SCHEME = ["flight-platform-mongodb"]

    def __init__(self, uri: str, settings: Settings):
        super().__init__(uri, database_name=mongo.web_database(settings.mongo_database),
                         counter_collection_name=mongo.RATE_LIMIT_COUNTERS,
                         window_collection_name=mongo.RATE_LIMIT_WINDOWS)
        self.settings = settings

    def _init_mongo_client(self, uri: str | None, **options) -> MongoClient:
        return mongo.create_client(self.settings, Role.WEB, timeout_ms=RATE_LIMIT_STORAGE_TIMEOUT_MS)

    def __del__(self) -> None:
        # limits' own would connect (and create the indexes) just to close a client never made.
        # At the interpreter's exit the process's end closes the connections: closing them there,
        # in a gevent worker, fails ("greenlet is being finalized").
        if self._storage is not None and not sys.is_finalizing():
            self._storage.close()


def add_security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def install(app: Flask, settings: Settings) -> Limiter | None:
    """Add the defences to `app`; the limiter (none without a limit) is returned for the 429
    handler's Retry-After."""
    app.after_request(add_security_headers)
    if settings.web_trusted_proxies:
        # Each trusted proxy appends the address it saw; the client's is the one the farthest
        # trusted proxy added. Without any, X-Forwarded-For is the client's own claim: ignored.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.web_trusted_proxies)
    if settings.web_rate_limit is None:
        return None
    parse(settings.web_rate_limit)  # a malformed limit stops the app at its start, not each POST
    return Limiter(
        get_remote_address, app=app, default_limits=[settings.web_rate_limit],
        default_limits_exempt_when=lambda: request.method != "POST",
        strategy="moving-window", storage_uri="flight-platform-mongodb://",
        storage_options={"settings": settings}, in_memory_fallback_enabled=True)
