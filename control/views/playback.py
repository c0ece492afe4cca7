"""``/api/control/{code}/...``: pause, resume, seek, speed, loop, filter and noise of one session."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from control import shapes
from control.bodies import INT64, bad_request, check_fields, json_object, session_code
from control.errors import ApiError
from control.extensions import call, config

bp = Blueprint("control", __name__, url_prefix="/api/control")

# Noise presets that mean "off" when given as a name, so `{"noise": "off"}` reads naturally.
OFF_NAMES = frozenset({"off", "none", ""})


def filter_args(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{}`` (clear), ``{"target_id": n}`` or ``{"trial_id": n}`` -> the `filter` command's args."""
    fields = check_fields(body, {"target_id": "int", "trial_id": "int"})
    if len(fields) > 1:
        raise bad_request(f"give {prefix}target_id or {prefix}trial_id, not both")
    return fields


def noise_arg(value: Any) -> Any:
    """A preset name, a parameter object, or off (null, false, "off") -> the `noise` argument."""
    if value is False or (isinstance(value, str) and value.strip().lower() in OFF_NAMES):
        return None
    return value


def _run(code: str, cmd: str, status: str, **args: Any):
    session = call(cmd, code=session_code(code), **args)
    return shapes.control_result(status, session, config(), **args)


@bp.post("/<code>/pause")
def pause(code: str):
    check_fields(json_object(), {})
    return _run(code, "pause", "paused")


@bp.post("/<code>/resume")
def resume(code: str):
    check_fields(json_object(), {})
    return _run(code, "resume", "resumed")


@bp.post("/<code>/seek")
def seek(code: str):
    body = json_object()
    if not body and "position_seconds" in request.args:  # the original server's query parameter
        body = {"position_seconds": query_number("position_seconds")}
    fields = check_fields(body, {"packet_id": "int", "position_seconds": "number"})
    if len(fields) != 1:
        raise bad_request("give `packet_id` (or `position_seconds`), exactly one of them")
    if "packet_id" in fields:
        return _run(code, "seek", "seeked", packet_id=fields["packet_id"])
    seconds = fields["position_seconds"]
    packet_id = int(seconds * 1000 // call("dataset")["bin_size_ms"])
    if not -INT64 <= packet_id < INT64:
        raise ApiError(422, "out_of_range", "`position_seconds` is out of range")
    result = _run(code, "seek", "seeked", packet_id=packet_id)
    result["position_seconds"] = seconds
    return result


def query_number(name: str) -> float:
    try:
        return float(request.args[name])
    except ValueError:
        raise bad_request(f"`{name}` must be a number") from None


@bp.post("/<code>/speed")
def speed(code: str):
    fields = check_fields(json_object(), {"speed": "number"}, required=("speed",))
    return _run(code, "speed", "speed_set", speed=fields["speed"])


@bp.post("/<code>/loop")
def loop(code: str):
    fields = check_fields(json_object(), {"loop": "bool"}, required=("loop",))
    return _run(code, "loop", "loop_set", loop=fields["loop"])


@bp.post("/<code>/filter")
def filter_(code: str):
    args = filter_args(json_object())
    return _run(code, "filter", "filtered" if args else "filter_cleared", **args)


@bp.post("/<code>/noise")
def noise(code: str):
    fields = check_fields(json_object(), {"noise": "noise"}, required=("noise",))
    value = noise_arg(fields.get("noise"))
    return _run(code, "noise", "noise_off" if value is None else "noise_set", noise=value)
