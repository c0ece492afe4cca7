"""The command table: one small handler per command in protocol.COMMANDS.

A handler receives the sessions (broker.lifecycle.Sessions) and arguments already type-checked against COMMANDS (presence and
types); it checks ranges and existence, raising CommandError, and returns a msgpack-ready result.
docs/protocol.md documents each command's semantics, result and errors.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import msgpack

from broker.evaluation import EvalSettings
from broker.frames import nil_if_nan
from broker.lifecycle import Sessions
from broker.noise import parse_noise
from broker.replies import Incremental
from broker.scoring import ScoringOptions
from broker.perturb.spec import catalogue
from broker.session import PAUSED, PLAYING, Session, check_speed
from protocol.commands import COMMANDS, CommandError, ErrorCode
from protocol.version import __version__
from protocol.wire import PROTOCOL_VERSION

Args = dict[str, Any]
EVAL_ARGS = ("withhold_labels", "lockstep", "lockstep_timeout_ms")
SCORING_ARGS = ("window", "lag_ms", "radius_mm", "hold_ms")
_pack = msgpack.Packer(use_bin_type=True).pack


def ping(b: Sessions, args: Args) -> dict[str, Any]:
    return {"version": __version__, "protocol": PROTOCOL_VERSION,
            "dataset": b.recording.name, "uptime_s": round(time.monotonic() - b.process.started_mono, 3),
            "sessions": len(b.registry), "state": b.state_status()}


def dataset(b: Sessions, args: Args) -> dict[str, Any]:
    return dict(b.dataset_meta)


def create(b: Sessions, args: Args) -> dict[str, Any]:
    settings = EvalSettings.parse(**{k: args[k] for k in EVAL_ARGS if k in args})
    s = b.create(args.get("code"), speed=args.get("speed", 1.0),
                         loop=args.get("loop", True), paused=args.get("paused", False),
                         filter=args.get("filter"), noise=args.get("noise"), settings=settings,
                         lsl=args.get("lsl", False),
                         perturbations=args.get("perturbations"))
    return b.view(s)


def get(b: Sessions, args: Args) -> dict[str, Any]:
    return b.view(b.touch(args["code"]))


def list_(b: Sessions, args: Args) -> Incremental:
    return Incremental({}, "sessions", list(b.registry), lambda s: _pack(b.view(s)), dict, 0)


def delete(b: Sessions, args: Args) -> dict[str, Any]:
    b.delete(args["code"], "deleted by command")
    return {"code": args["code"], "deleted": True}


def cleanup(b: Sessions, args: Args) -> dict[str, Any]:
    return {"removed": b.cleanup()}


def _change(b: Sessions, code: str, change: Callable) -> dict[str, Any]:
    s = b.touch(code)
    change(s, time.monotonic())
    b.changed(s)
    return b.view(s)


def pause(b: Sessions, args: Args) -> dict[str, Any]:
    return _change(b, args["code"], lambda s, now: s.pause(now))


def resume(b: Sessions, args: Args) -> dict[str, Any]:
    return _change(b, args["code"], lambda s, now: s.resume(now))


def bin_containing(seconds: float, bin_ms: int) -> int:
    """The bin whose [left edge, right edge) holds ``seconds`` of recording time.

    The time is rounded to the microsecond first, so that 8.075 s (8074.999999... ms in binary
    floating point) is the left edge of bin 323 at 25 ms, not inside bin 322.
    """
    micros = round(seconds * 1_000_000)
    return micros // (bin_ms * 1000)


def _seek_target(b: Sessions, args: Args) -> int:
    total = b.recording.n_bins
    if ("packet_id" in args) == ("position_seconds" in args):
        raise CommandError(ErrorCode.BAD_REQUEST, "seek: give `packet_id` or `position_seconds`, exactly one")
    if "packet_id" in args:
        packet_id = args["packet_id"]
        if not 0 <= packet_id < total:
            raise CommandError(ErrorCode.OUT_OF_RANGE,
                               f"packet_id must be in [0, {total - 1}], got {packet_id}")
        return packet_id
    seconds = args["position_seconds"]
    duration = total * b.recording.bin_ms / 1000.0
    if not (math.isfinite(seconds) and 0 <= seconds < duration):
        raise CommandError(ErrorCode.OUT_OF_RANGE,
                           f"position_seconds must be in [0, {duration:g}), got {seconds}")
    return min(bin_containing(seconds, b.recording.bin_ms), total - 1)


def seek(b: Sessions, args: Args) -> dict[str, Any]:
    s = b.touch(args["code"])
    packet_id = _seek_target(b, args)
    return _change(b, s.code, lambda s, now: s.seek(now, packet_id))


def speed(b: Sessions, args: Args) -> dict[str, Any]:
    value = args["speed"]
    s = b.touch(args["code"])
    if not check_speed(value):
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"speed must be in [0.1, 1000], got {value}")
    return _change(b, s.code, lambda s, now: s.set_speed(now, value))


def loop(b: Sessions, args: Args) -> dict[str, Any]:
    return _change(b, args["code"], lambda s, now: s.set_loop(now, args["loop"]))


def filter_(b: Sessions, args: Args) -> dict[str, Any]:
    b.touch(args["code"])
    playlist = b.registry.playlist({k: args[k] for k in ("target_id", "trial_id") if k in args})
    return _change(b, args["code"], lambda s, now: s.set_playlist(now, playlist))


def noise(b: Sessions, args: Args) -> dict[str, Any]:
    b.touch(args["code"])
    settings = parse_noise(args["noise"])

    return _change(b, args["code"], lambda s, now: b.set_perturbations(s, settings, s.perturbations))


def perturbations(b: Sessions, args: Args) -> dict[str, Any]:
    return b.touch(args["code"]).perturbations_dict()


def set_perturbations(b: Sessions, args: Args) -> dict[str, Any]:
    b.touch(args["code"])
    pset = b.parse_perturbations(args["perturbations"])
    _change(b, args["code"], lambda s, now: b.set_perturbations(s, s.noise, pset))
    return b.registry.get(args["code"]).perturbations_dict()


def clear_perturbations(b: Sessions, args: Args) -> dict[str, Any]:
    _change(b, args["code"], lambda s, now: b.set_perturbations(s, s.noise, None))
    return b.registry.get(args["code"]).perturbations_dict()


def perturbation_kinds(b: Sessions, args: Args) -> dict[str, Any]:
    return {"kinds": catalogue()}


def lsl(b: Sessions, args: Args) -> dict[str, Any]:
    def apply(s, now):
        s.lsl = args["enabled"]
    return _change(b, args["code"], apply)


def session_metrics(s: Session) -> dict[str, Any]:
    m = s.metrics
    return {
        "packets_sent": m.sent,
        "dropped_packets": m.skipped,
        "packets_skipped": m.skipped,
        "network_latency_ms": m.build.summary_ms(),
        "timing_error_ms": m.lateness.summary_ms(),
        "memory_usage_mb": round(s.memory_bytes() / 1e6, 4),
        "is_running": s.state == PLAYING,
        "is_paused": s.state == PAUSED,
        "state": s.state,
        "publishing": s.published and s.state == PLAYING,
        "connections": s.subscribers,
        "speed": s.speed,
        "current_packet": s.current_packet(),
        "decoders": s.evaluation.metrics(),
        "perturbations": _fault_counts(s),
        "perturbation_compute": {"ahead": m.computed_ahead, "at_deadline": m.computed_at_deadline},
    }


def metrics(b: Sessions, args: Args) -> Incremental:
    """Per-session figures built a session at a time between packets (broker.replies);
    `active_sessions` and `total_connections` are summed over the same pieces."""
    totals = {"active_sessions": 0, "total_connections": 0}

    def piece(s: Session) -> bytes:
        s.sync(time.monotonic())
        figures = session_metrics(s)
        totals["active_sessions"] += bool(figures["is_running"] and figures["connections"])
        totals["total_connections"] += figures["connections"]
        return _pack(s.code) + _pack(figures)

    fixed = {
        "timestamp": time.time(),
        "service": "PhantomLink Core",
        "version": __version__,
        "process": b.process.summary(),
        "dataset": {"name": b.recording.name, "total_packets": b.recording.n_bins,
                    "memory_mb": round(b.recording_bytes() / 1e6, 2)},
        "late_skip_ms": b.config.late_skip_ms,
        "send_batch_us": b.config.send_batch_us,
        "send_batching": b.send_batching,
        "wake_grid_ms": b.config.wake_grid_ms,
        "wake_group_joins": b.wake_groups.joined,
        "total_sessions": len(b.registry),
        "wildcard_subscribers": b.registry.wildcards,
        **b.subscription_figures(),
        "state": b.state_status(),
    }
    return Incremental(fixed, "sessions", list(b.registry), piece, lambda: totals, len(totals),
                       as_map=True)


def evaluation(b: Sessions, args: Args) -> dict[str, Any]:
    s = b.touch(args["code"])
    opts = ScoringOptions(**{k: args[k] for k in SCORING_ARGS if k in args})
    problem = opts.check()
    if problem:
        raise CommandError(ErrorCode.OUT_OF_RANGE if "window" not in problem
                           else ErrorCode.BAD_REQUEST, problem)
    report = s.evaluation.report(opts, args.get("decoder"))
    return {"session": s.code, "labels_withheld": s.withhold_labels, "lockstep": s.lockstep,
            "bins_published": s.evaluation.published.count if s.evaluation.published else 0,
            **report}


def evaluation_reset(b: Sessions, args: Args) -> dict[str, Any]:
    s = b.touch(args["code"])
    s.evaluation.reset()
    return {"session": s.code, "reset": True}


def _fault_counts(s) -> dict[str, Any]:
    """What the session's transport faults did since it was created (zeros without any), and the
    ids active now."""
    return {**s.fault_counts.summary(), "active": list(s.last_active)}


def trials(b: Sessions, args: Args) -> dict[str, Any]:
    rec = b.recording
    if "target_id" in args:
        chosen = rec.trials_for_target(args["target_id"])
        if not chosen:
            raise CommandError(ErrorCode.NOT_FOUND, f"no trial with target_id {args['target_id']}")
    else:
        chosen = list(rec.trials)
    return {"trials": [trial_dict(t) for t in chosen], "total_trials": len(chosen)}


def trial(b: Sessions, args: Args) -> dict[str, Any]:
    found = b.recording.trial_by_id(args["trial_id"])
    if found is None:
        raise CommandError(ErrorCode.NOT_FOUND, f"no trial with trial_id {args['trial_id']}")
    return trial_dict(found)


def trial_dict(t) -> dict[str, Any]:
    """A trial's fields, msgpack-ready (NaN -> nil)."""
    out = {}
    for key, value in t.to_dict().items():
        if isinstance(value, (list, tuple)):
            value = [nil_if_nan(v) for v in value]
        value = nil_if_nan(value)
        out[key] = None if isinstance(value, float) and math.isinf(value) else value
    return out


# A handler returns a msgpack-ready result, or an Incremental reply the loop builds between packets.
HANDLERS: dict[str, Callable[[Sessions, Args], Any]] = {
    "ping": ping, "dataset": dataset, "create": create, "get": get, "list": list_,
    "delete": delete, "cleanup": cleanup, "pause": pause, "resume": resume, "seek": seek,
    "speed": speed, "loop": loop, "filter": filter_, "noise": noise, "lsl": lsl, "metrics": metrics,
    "trials": trials, "trial": trial, "evaluation": evaluation, "evaluation_reset": evaluation_reset,
    "perturbations": perturbations,
    "set_perturbations": set_perturbations, "clear_perturbations": clear_perturbations,
    "perturbation_kinds": perturbation_kinds,
}
assert set(HANDLERS) == set(COMMANDS), "every command in protocol.COMMANDS needs a handler"
