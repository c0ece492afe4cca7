"""``create_app(config, broker_client=None)``: the Flask app with its broker client and Blueprints."""
from __future__ import annotations

from flask import Flask

from control import errors, extensions
from control.broker_client import BrokerClient
from control.views import docs, health, metrics, playback, sessions, stats, trials
from protocol.config import Config

# Bodies are a few fields of JSON; anything near this size is a mistake or an attack (413).
MAX_BODY_BYTES = 64 * 1024

BLUEPRINTS = (health.bp, sessions.bp, playback.bp, stats.bp, trials.bp, metrics.bp, docs.bp)


def create_app(config: Config, broker_client: BrokerClient | None = None) -> Flask:
    """The REST app; it talks to ``broker_client``, or to one built from ``config``."""
    app = Flask("control", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = broker_client or BrokerClient(config.control_endpoint, config.control_timeout_ms)
    extensions.install(app, config, client)
    errors.register(app)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    return app
