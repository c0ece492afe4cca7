"""The control plane: a stateless REST API (Flask on waitress) that turns each call into one broker command.

``create_app(config)`` builds the app; ``python -m control`` serves it. docs/control.md is the API
reference; ``/openapi.json`` and ``/docs`` describe the same routes from the running server.
"""
from __future__ import annotations

from control.app import create_app

__all__ = ["create_app"]
