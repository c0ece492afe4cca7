"""``/api/sessions``: create, list, inspect, delete and clean up playback sessions."""
from __future__ import annotations

from flask import Blueprint, request

from control import shapes
from control.bodies import bad_request, check_fields, json_object, session_code
from control.extensions import call, config
from control.views.playback import filter_args, noise_arg
from protocol import ProtocolError, validate_code

bp = Blueprint("sessions", __name__, url_prefix="/api/sessions")

CREATE_FIELDS = {"custom_code": "str", "speed": "number", "loop": "bool", "paused": "bool",
                 "filter": "object", "noise": "noise"}


@bp.post("/create")
def create():
    body = json_object()
    if "custom_code" in request.args and "custom_code" not in body:
        body["custom_code"] = request.args["custom_code"]  # the original server's query parameter
    fields = check_fields(body, CREATE_FIELDS)
    args = {key: fields[key] for key in ("speed", "loop", "paused") if key in fields}
    if "custom_code" in fields:
        try:
            args["code"] = validate_code(fields["custom_code"])
        except ProtocolError as exc:
            raise bad_request(f"`custom_code`: {exc}") from None
    if "filter" in fields:
        args["filter"] = filter_args(fields["filter"], "filter.")
    if "noise" in fields:
        args["noise"] = noise_arg(fields["noise"])
    return shapes.created(call("create", **args), config())


@bp.get("")
def list_sessions():
    return shapes.session_list(call("list")["sessions"], config())


@bp.get("/<code>")
def get(code: str):
    return shapes.session_detail(call("get", code=session_code(code)), config())


@bp.delete("/<code>")
def delete(code: str):
    result = call("delete", code=session_code(code))
    return {"session_code": result.get("code", code), "deleted": True,
            "message": f"Session {code} deleted"}


@bp.post("/cleanup")
def cleanup():
    check_fields(json_object(), {})
    removed = call("cleanup")["removed"]
    return {"cleaned_up": len(removed), "removed": removed,
            "message": f"Removed {len(removed)} expired sessions"}
