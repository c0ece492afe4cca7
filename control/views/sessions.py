"""``/api/sessions``: create, list, inspect, delete and clean up playback sessions."""
from __future__ import annotations

from control import shapes
from control.extensions import call, config
from control.inputs import CreateBody, CreateQuery, NoBody, SessionPath
from control.responses import (BROKER, Cleanup, Created, Deleted, Session, SessionList, errors)
from control.views import blueprint
from control.views.playback import noise_arg

bp = blueprint("sessions", __name__, url_prefix="/api/sessions")
PASSED_ON = {"speed", "loop", "paused", "withhold_labels", "lockstep", "lockstep_timeout_ms"}


@bp.post("/create", summary="Create a session",
         description="The body is optional; with none, a code such as `swift-neural-42` is "
                     "generated and playback starts at once. The original server's query form "
                     "`?custom_code=...` also works.",
         responses={200: Created, **errors(400, 409, 413, 415, 422, 429), **BROKER})
def create(body: CreateBody, query: CreateQuery):
    if body.custom_code is None and query.custom_code is not None:
        body = CreateBody.model_validate({**body.model_dump(exclude_unset=True),
                                          "custom_code": query.custom_code})
    args = body.model_dump(include=PASSED_ON, exclude_none=True)
    if body.custom_code is not None:
        args["code"] = body.custom_code
    if body.filter is not None:
        args["filter"] = body.filter.args()
    if "noise" in body.model_fields_set:
        args["noise"] = noise_arg(body.noise)
    # Sessions created over REST are mirrored to LSL by default, while under the LSL bound.
    args["lsl"] = "auto" if body.lsl is None else body.lsl
    if body.perturbations is not None:
        args["perturbations"] = body.perturbations
    return shapes.created(call("create", **args), config())


@bp.get("", summary="List every session", responses={200: SessionList, **BROKER})
def list_sessions():
    return shapes.session_list(call("list")["sessions"], config())


@bp.get("/<code>", summary="One session", responses={200: Session, **errors(404), **BROKER})
def get(path: SessionPath):
    return shapes.session_detail(call("get", code=path.code), config())


@bp.delete("/<code>", summary="Delete a session",
           responses={200: Deleted, **errors(404), **BROKER})
def delete(path: SessionPath):
    result = call("delete", code=path.code)
    return {"session_code": result.get("code", path.code), "deleted": True,
            "message": f"Session {path.code} deleted"}


@bp.post("/cleanup", summary="Delete every session idle for longer than the TTL",
         responses={200: Cleanup, **errors(400, 413, 415), **BROKER})
def cleanup(body: NoBody):
    removed = call("cleanup")["removed"]
    return {"cleaned_up": len(removed), "removed": removed,
            "message": f"Removed {len(removed)} expired sessions"}
