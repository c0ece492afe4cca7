"""``create_app(config, broker_client=None)``: the flask-openapi3 app with its broker client and
API Blueprints; each route's pydantic models both validate its requests and document it."""
from __future__ import annotations

from flask_openapi3 import Info, OpenAPI

from control import errors, extensions, guard, prometheus
from control.inputs import JsonRequest
from control.responses import Error, errors as error_responses
from control.views import (dashboard, docs, evaluation, health, metrics, perturbations, playback,
                           sessions, stats, trials)
from protocol.client import BrokerClient
from protocol.version import __version__ as VERSION
from protocol.config import Config

# Bodies are a few fields of JSON; anything near this size is a mistake or an attack (413).
MAX_BODY_BYTES = 64 * 1024

BLUEPRINTS = (health.bp, sessions.bp, evaluation.bp, playback.bp, perturbations.bp, stats.bp,
              trials.bp, metrics.bp, docs.bp, dashboard.bp)

INFO = Info(title="PhantomLink control API", version=VERSION, description=(
    "Create and drive replay sessions of a neural recording. Every error is JSON "
    "`{\"error\": {\"code\", \"message\"}}`; the status says which kind (see each operation)."))


def create_app(config: Config, broker_client: BrokerClient | None = None) -> OpenAPI:
    """The REST app; it talks to ``broker_client``, or to one built from ``config``."""
    app = OpenAPI(
        "control", info=INFO, static_folder=None,
        doc_ui=False,  # control.views.docs serves /openapi.json and Swagger UI at /docs
        responses=error_responses(405),  # every route answers 405 to a method it does not serve
        validation_error_status=400, validation_error_model=Error,
        validation_error_callback=errors.validation_error)
    app.request_class = JsonRequest
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = broker_client or BrokerClient(config.control_endpoint, config.control_timeout_ms,
                                           curve_dir=config.curve_dir)
    telemetry = prometheus.Telemetry(metrics.metrics_document)
    extensions.install(app, config, client, telemetry)
    prometheus.instrument(app, telemetry)
    errors.register(app)
    guard.install(app, config)
    for bp in BLUEPRINTS:
        app.register_api(bp)
    app.register_blueprint(docs.assets)
    return app
