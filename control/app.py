"""``create_app(config, broker_client=None)``: the flask-openapi3 app with its broker client and
API Blueprints; each route's pydantic models both validate its requests and document it."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from flask.sessions import NullSession, SessionInterface
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


class _NoSessions(SessionInterface):
    """Control keeps no cookie sessions: every request gets the one read-only null session,
    instead of Flask looking for a secret key and building a new one each time."""
    null = NullSession()

    def open_session(self, app, request) -> NullSession:  # type: ignore[override]
        return self.null

    def save_session(self, app, session, response) -> None:  # type: ignore[override]
        return None


class ControlApp(OpenAPI):
    """flask-openapi3's app without per-request work control never needs: no cookie sessions, and
    no async views, so ``ensure_sync`` (Flask's documented hook for running them) hands every view
    and hook back as it is rather than inspecting it on each call. create_app checks the latter."""
    session_interface = _NoSessions()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func


def _check_sync(app: OpenAPI) -> None:
    hooks = [f for funcs in (*app.before_request_funcs.values(), *app.after_request_funcs.values(),
                             *app.teardown_request_funcs.values()) for f in funcs]
    for func in [*app.view_functions.values(), *hooks]:
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__qualname__} is async: control runs sync views only")


def create_app(config: Config, broker_client: BrokerClient | None = None) -> OpenAPI:
    """The REST app; it talks to ``broker_client``, or to one built from ``config``."""
    app = ControlApp(
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
    _check_sync(app)
    return app
