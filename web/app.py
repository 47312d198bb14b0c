"""App factory: `gunicorn -c python:web.gunicorn_config 'web.app:create_app()'` in production,
`create_app(settings)` in tests."""

from flask import Flask

from flight_platform.settings import Settings, load_settings
from web import defences, metrics
from web.clients import ServiceClients
from web.routes import predictions

# Six short fields take under 1 KiB: a body over 16 KiB is a mistake or an attack, refused unread.
MAX_BODY_BYTES = 16 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Created per process, after gunicorn forks its workers: Kafka and Mongo clients are not fork-safe.
    app.extensions["service_clients"] = ServiceClients(settings)
    app.extensions["rate_limiter"] = defences.install(app, settings)
    metrics.install(app)
    app.register_blueprint(predictions)
    return app
