"""The REST resources, one APIBlueprint per module: health, sessions, control, stats, trials, metrics, docs.

A route is declared once: its path, body and query models (control.inputs) are the view's
annotated parameters and its responses come from control.responses; flask-openapi3 validates
requests with them and writes /openapi.json from them (docs/control.md, "Adding a route").
"""
from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag

from control.responses import errors


def blueprint(name: str, import_name: str, url_prefix: str | None = None,
              tag: str | None = None, token: bool = True) -> APIBlueprint:
    """An APIBlueprint whose operations are grouped under ``tag`` (default: its name) and all
    document the 405 that Flask answers to a method the path does not serve, the 403 of
    control.guard and, unless ``token`` is False (pages, /health), its 401."""
    statuses = (401, 403, 405) if token else (403, 405)
    return APIBlueprint(name, import_name, url_prefix=url_prefix,
                        abp_tags=[Tag(name=tag or name)], abp_responses=errors(*statuses))
