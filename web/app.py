"""App factory: `gunicorn 'web.app:create_app()'` in production, `create_app(settings)` in tests."""

from flask import Flask

from flight_platform.settings import Settings, load_settings
from web.clients import ServiceClients
from web.routes import predictions


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False
    # Created per process, after gunicorn forks its workers: Kafka and Mongo clients are not fork-safe.
    app.extensions["service_clients"] = ServiceClients(settings or load_settings())
    app.register_blueprint(predictions)
    return app
