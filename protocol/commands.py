"""Command channel (REQ -> broker REP): requests, replies, error codes and the command table.

A request is one msgpack map ``{"v": 1, "cmd": str, "args": map}``; the reply is one msgpack map,
``{"v": 1, "ok": true, "result": ...}`` or ``{"v": 1, "ok": false, "error": {"code", "message"}}``.

COMMANDS is the single list of commands and their argument types; parse_request checks a request
against it, so a broker handler only ever sees arguments of the declared types (value ranges and
existence are the handler's to check).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from protocol.wire import PROTOCOL_VERSION, ProtocolError, decode, encode

MAX_REQUEST_BYTES = 64 * 1024


class ErrorCode(str, enum.Enum):
    BAD_REQUEST = "bad_request"            # malformed frame, wrong argument types, unknown argument
    UNKNOWN_COMMAND = "unknown_command"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_FOUND = "not_found"                # unknown session, trial or target
    CONFLICT = "conflict"                  # e.g. creating a session whose code is taken
    OUT_OF_RANGE = "out_of_range"          # a well-typed value outside its allowed range
    LIMIT = "limit"                        # session limit reached and no idle session to evict
    UNAVAILABLE = "unavailable"            # raised by clients: the broker did not answer in time
    INTERNAL = "internal"                  # a bug in the broker; reported, never crashes it


class CommandError(Exception):
    """An error reply: a stable machine-readable code, a human message and, for `limit`, how many
    seconds until trying again may succeed (``retry_after_s``, else None)."""

    def __init__(self, code: ErrorCode | str, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


# Argument types: "int" (not bool), "number" (int or float, not bool), "str", "bool", "map",
# "noise" (a preset name, a map of parameters, or nil/false for off), "lsl" (a bool or "auto"),
# "perturbations" (a map {seed?, items}, a list of items, or nil for none).
_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "map": lambda v: isinstance(v, dict),
    "noise": lambda v: v is None or v is False or isinstance(v, (str, dict)),
    "lsl": lambda v: isinstance(v, bool) or v == "auto",
    "perturbations": lambda v: v is None or isinstance(v, (list, dict)),
}


@dataclass(frozen=True)
class Arg:
    type: str
    required: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Arg]
    summary: str


def _cmd(name: str, summary: str, **args: Arg) -> Command:
    return Command(name, args, summary)


_CODE = Arg("str", required=True)

COMMANDS: dict[str, Command] = {c.name: c for c in (
    _cmd("ping", "liveness and versions"),
    _cmd("dataset", "the dataset's metadata (the `meta` payload without session fields)"),
    _cmd("create", "create a session (auto code unless `code` is given)",
         code=Arg("str"), speed=Arg("number"), loop=Arg("bool"), paused=Arg("bool"),
         filter=Arg("map"), noise=Arg("noise"), withhold_labels=Arg("bool"),
         lockstep=Arg("bool"), lockstep_timeout_ms=Arg("number"), lsl=Arg("lsl"),
         perturbations=Arg("perturbations")),
    _cmd("get", "one session", code=_CODE),
    _cmd("list", "every session"),
    _cmd("delete", "delete a session", code=_CODE),
    _cmd("cleanup", "delete every session idle for longer than the TTL"),
    _cmd("pause", "pause playback", code=_CODE),
    _cmd("resume", "resume playback", code=_CODE),
    _cmd("seek", "move playback to a packet id, or to the bin containing a time",
         code=_CODE, packet_id=Arg("int"), position_seconds=Arg("number")),
    _cmd("speed", "set the playback speed", code=_CODE, speed=Arg("number", required=True)),
    _cmd("loop", "loop at the end or stop there", code=_CODE, loop=Arg("bool", required=True)),
    _cmd("filter", "play only one target's or one trial's trials; no id clears",
         code=_CODE, target_id=Arg("int"), trial_id=Arg("int")),
    _cmd("noise", "set, change or switch off noise injection",
         code=_CODE, noise=Arg("noise", required=True)),
    _cmd("lsl", "mirror the session as LSL outlets, or stop",
         code=_CODE, enabled=Arg("bool", required=True)),
    _cmd("perturbations", "a session's perturbation schedule and the ids active now", code=_CODE),
    _cmd("set_perturbations", "replace a session's perturbation schedule",
         code=_CODE, perturbations=Arg("perturbations", required=True)),
    _cmd("clear_perturbations", "remove every perturbation of a session (legacy noise stays)",
         code=_CODE),
    _cmd("perturbation_kinds", "every perturbation kind with its parameters and presets"),
    _cmd("metrics", "per-session and process metrics"),
    _cmd("trials", "the dataset's trials, optionally only one target's", target_id=Arg("int")),
    _cmd("trial", "one trial", trial_id=Arg("int", required=True)),
    _cmd("evaluation", "the session's decoder evaluation (latency, accuracy, reaches)",
         code=_CODE, decoder=Arg("str"), window=Arg("str"), lag_ms=Arg("number"),
         radius_mm=Arg("number"), hold_ms=Arg("number")),
    _cmd("evaluation_reset", "forget the session's predictions and start scoring afresh",
         code=_CODE),
)}


def encode_request(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "cmd": cmd, "args": args or {}})


def parse_request(frame: bytes) -> tuple[Command, dict[str, Any]]:
    """Decode and type-check one request; CommandError (never anything else) when it is bad."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise CommandError(ErrorCode.BAD_REQUEST,
                           f"request of {len(frame)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        msg = decode(frame, MAX_REQUEST_BYTES)
    except ProtocolError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if not isinstance(msg, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "request must be a map {v, cmd, args}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise CommandError(ErrorCode.UNSUPPORTED_VERSION,
                           f"protocol version {msg.get('v')!r} is not supported (use {PROTOCOL_VERSION})")
    name, args = msg.get("cmd"), msg.get("args", {})
    if not isinstance(name, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "`cmd` must be a string")
    command = COMMANDS.get(name)
    if command is None:
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {name[:64]!r}")
    if not isinstance(args, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "`args` must be a map")
    return command, _check_args(command, args)


def _check_args(command: Command, args: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(command.args))
    if unknown:
        raise CommandError(ErrorCode.BAD_REQUEST,
                           f"{command.name}: unknown argument(s) {', '.join(map(str, unknown))}")
    for name, spec in command.args.items():
        if name not in args:
            if spec.required:
                raise CommandError(ErrorCode.BAD_REQUEST, f"{command.name}: `{name}` is required")
            continue
        if not _TYPES[spec.type](args[name]):
            raise CommandError(ErrorCode.BAD_REQUEST,
                               f"{command.name}: `{name}` must be of type {spec.type}")
    return args


def encode_ok(result: Any) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "ok": True, "result": result})


def encode_error(code: ErrorCode | str, message: str, retry_after_s: float | None = None) -> bytes:
    error: dict[str, Any] = {"code": ErrorCode(code).value, "message": message}
    if retry_after_s is not None:
        error["retry_after_s"] = float(retry_after_s)
    return encode({"v": PROTOCOL_VERSION, "ok": False, "error": error})


def parse_reply(frame: bytes) -> Any:
    """The result of a reply, or CommandError carrying the broker's error code and message."""
    try:
        msg = decode(frame, 64 << 20)
    except ProtocolError as exc:
        raise CommandError(ErrorCode.INTERNAL, f"unreadable reply from broker: {exc}") from None
    if not isinstance(msg, dict) or "ok" not in msg:
        raise CommandError(ErrorCode.INTERNAL, "malformed reply from broker")
    if msg["ok"]:
        return msg.get("result")
    err = msg.get("error") or {}
    try:
        code = ErrorCode(err.get("code"))
    except ValueError:
        code = ErrorCode.INTERNAL
    retry = err.get("retry_after_s")
    retry = float(retry) if isinstance(retry, (int, float)) and not isinstance(retry, bool) else None
    raise CommandError(code, str(err.get("message", "")), retry)
