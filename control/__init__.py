"""The control plane: a stateless REST API (Flask on waitress) that turns each call into one broker command.

``create_app(config)`` builds the app; ``python -m control`` serves it. docs/control.md is the API
reference; ``/openapi.json`` and ``/docs`` describe the same routes from the running server.
"""
from __future__ import annotations

import tomllib

from protocol.config import REPO_ROOT


def _version() -> str:
    try:
        with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


VERSION = _version()

from control.app import create_app  # noqa: E402  (needs VERSION defined first)

__all__ = ["VERSION", "create_app"]
