"""``/api/control/{code}/...``: pause, resume, stop, seek, position, speed, loop, filter, noise and lsl of one session."""
from __future__ import annotations

from typing import Any

from control import shapes
from control.errors import bad_request
from control.extensions import call, config
from control.inputs import (FilterBody, LoopBody, LslBody, NoBody, NoiseBody, SeekBody,
                            SeekQuery, SessionPath, SpeedBody)
from control.responses import BROKER, ControlResult, Position, errors
from control.views import blueprint

bp = blueprint("control", __name__, url_prefix="/api/control")

# Noise presets that mean "off" when given as a name, so `{"noise": "off"}` reads naturally.
OFF_NAMES = frozenset({"off", "none", ""})

# What every control action can answer besides its success.
ANSWERS = {200: ControlResult, **errors(400, 404, 413, 415, 422), **BROKER}


def noise_arg(value: Any) -> Any:
    """A preset name, a parameter object, or off (null, false, "off") -> the `noise` argument."""
    if value is False or (isinstance(value, str) and value.strip().lower() in OFF_NAMES):
        return None
    return value


def _run(code: str, cmd: str, status: str, **args: Any):
    session = call(cmd, code=code, **args)
    return shapes.control_result(status, session, config(), **args)


@bp.post("/<code>/pause", summary="Pause playback", responses=ANSWERS)
def pause(path: SessionPath, body: NoBody):
    return _run(path.code, "pause", "paused")


@bp.post("/<code>/resume", summary="Resume playback (re-anchors the deadlines)", responses=ANSWERS)
def resume(path: SessionPath, body: NoBody):
    return _run(path.code, "resume", "resumed")


@bp.post("/<code>/stop", summary="Stop playback: pause and go back to the first packet",
         description="The original server's stop. `resume` then plays from the start.",
         responses=ANSWERS)
def stop(path: SessionPath, body: NoBody):
    call("pause", code=path.code)
    return _run(path.code, "seek", "stopped", packet_id=0)


@bp.get("/<code>/position", summary="Where playback is: packet, seconds, fraction of the playlist",
        responses={200: Position, **errors(404), **BROKER})
def position(path: SessionPath):
    return shapes.position(call("get", code=path.code))


@bp.post("/<code>/seek", summary="Move playback to a packet id (or a time)",
         description="Give exactly one of `packet_id` and `position_seconds`. The original "
                     "server's query form `?position_seconds=12.5` (no body) also works.",
         responses=ANSWERS)
def seek(path: SessionPath, body: SeekBody, query: SeekQuery):
    packet_id, seconds = body.packet_id, body.position_seconds
    if packet_id is None and seconds is None:
        seconds = query.position_seconds
    if packet_id is None and seconds is None:
        raise bad_request("give `packet_id` (or `position_seconds`), exactly one of them")
    args = {"packet_id": packet_id} if packet_id is not None else {"position_seconds": seconds}
    # the broker converts a time to the bin containing it; the reply says where playback now is
    session = call("seek", code=path.code, **args)
    return shapes.control_result("seeked", session, config(), packet_id=session["current_packet"],
                                 position_seconds=session["elapsed_seconds"])


@bp.post("/<code>/speed", summary="Set the playback speed", responses=ANSWERS)
def speed(path: SessionPath, body: SpeedBody):
    return _run(path.code, "speed", "speed_set", speed=body.speed)


@bp.post("/<code>/loop", summary="Loop at the end, or stop there", responses=ANSWERS)
def loop(path: SessionPath, body: LoopBody):
    return _run(path.code, "loop", "loop_set", loop=body.loop)


@bp.post("/<code>/filter", summary="Play only one target's or one trial's trials; `{}` clears",
         description="404 when the target or trial does not exist in the dataset.",
         responses=ANSWERS)
def filter_(path: SessionPath, body: FilterBody):
    args = body.args()
    return _run(path.code, "filter", "filtered" if args else "filter_cleared", **args)


@bp.post("/<code>/lsl", summary="Mirror the session as LSL outlets, or stop",
         description="The LSL bridge mirrors at most PHANTOM_LSL_MAX_SESSIONS sessions; "
                     "flagged sessions past the bound wait for a slot (docs/lsl.md).",
         responses=ANSWERS)
def lsl(path: SessionPath, body: LslBody):
    return _run(path.code, "lsl", "lsl_on" if body.enabled else "lsl_off", enabled=body.enabled)


@bp.post("/<code>/noise", summary="Set, change or switch off noise injection", responses=ANSWERS)
def noise(path: SessionPath, body: NoiseBody):
    value = noise_arg(body.noise)
    return _run(path.code, "noise", "noise_off" if value is None else "noise_set", noise=value)
