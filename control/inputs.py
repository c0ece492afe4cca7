"""What a request may carry: pydantic models of every body, path and query value, declared once.

flask-openapi3 reads these models twice: to write the OpenAPI document and to validate each
request before its view runs. Control checks types and shapes (400); the broker checks ranges and
existence (422, 404, ...). Two checks stay here because the wire cannot carry the value at all:
integers beyond 64 bits and non-finite numbers are ``out_of_range`` (422). A path code that can
never be valid is ``not_found`` (404), like an unknown one. control.errors turns a validation
failure into the JSON error shape by these error types.

Body models are strict (``"4"`` is not a number, ``true`` is not 1) and forbid unknown fields, so a
typo is a 400 rather than silently ignored. A field given as null counts as absent, except
``noise``, where null means off.
"""
from __future__ import annotations

import json
import math
from functools import cache
from typing import Annotated, Any

from flask import Request
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      WithJsonSchema, model_validator)
from pydantic_core import PydanticCustomError

from control.errors import bad_request
from protocol import ProtocolError, validate_code

INT64 = 2 ** 63

# The validation error types that are not 400 (control.errors maps them).
OUT_OF_RANGE = "out_of_range"
NOT_FOUND = "not_found"
BAD_REQUEST = "bad_request"

CODE_PATTERN = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"


# -- the JSON body ------------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JsonRequest(Request):
    """Flask's Request whose JSON body is read strictly (control.guard has already answered 415
    to a body not declared ``application/json``).

    An empty body is ``{}``; malformed JSON (NaN and Infinity included) or a body that is not an
    object is a 400 with the reason, never a silent None. flask-openapi3 reads bodies through
    ``get_json``, so every body model sees exactly this.
    """

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        environ = self.environ
        if (environ.get("CONTENT_LENGTH", "") in ("", "0")
                and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "")):
            return {}       # no body at all (most commands): no input stream to set up
        raw = self.get_data(cache=True)  # enforces MAX_CONTENT_LENGTH (413)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise bad_request(f"body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise bad_request(f"body must be a JSON object, got {type(body).__name__}")
        return body


# -- value types ---------------------------------------------------------------------------------

def _wire_range(value: Any, name: str = "value") -> Any:
    """Numbers msgpack (int64, finite floats) cannot carry are out of range, however nested."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise PydanticCustomError(OUT_OF_RANGE, "{name} is out of range (64-bit integers)",
                                  {"name": name})
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError(OUT_OF_RANGE, "{name} must be finite", {"name": name})
    if isinstance(value, dict):
        for key, item in value.items():
            _wire_range(item, f"{name}.{key}")
    if isinstance(value, list):
        for item in value:
            _wire_range(item, f"{name}[]")
    return value


Int64 = Annotated[int, BeforeValidator(_wire_range)]
Number = Annotated[float, BeforeValidator(_wire_range)]


def _noise(value: Any) -> Any:
    if value is None or value is False or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _wire_range(value, "noise")
    raise PydanticCustomError(BAD_REQUEST, "must be a preset name, an object of parameters, "
                                           "null or false")


Noise = Annotated[Any, PlainValidator(_noise), WithJsonSchema({
    "description": "a preset name (`light`, `moderate`, `intense`, `extreme`), an object of "
                   "parameters, or off: `null`, `false` or `\"off\"`",
    "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "boolean", "enum": [False]},
              {"type": "null"}]})]


def _perturbations(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return _wire_range(value, "perturbations")
    raise PydanticCustomError(BAD_REQUEST, "must be an object {seed?, items} or a list of items")


PERTURBATION_ITEM = {"type": "object", "required": ["kind"], "additionalProperties": True,
                     "description": "`kind`, optional `id` and `preset`, the kind's parameters, "
                                    "and `start_packet|start_s`, `ramp_packets|ramp_s`, "
                                    "`end_packet|end_s` (docs/perturbations.md)"}
Perturbations = Annotated[Any, PlainValidator(_perturbations), WithJsonSchema({
    "description": "a perturbation set `{seed?, items: [item, ...]}` or just the list of items",
    "anyOf": [{"type": "object"}, {"type": "array", "items": PERTURBATION_ITEM}]})]


def _body_code(value: str) -> str:
    try:
        return validate_code(value)
    except ProtocolError as exc:
        raise PydanticCustomError(BAD_REQUEST, "{reason}", {"reason": str(exc)}) from None


def _path_code(value: str) -> str:
    try:
        return validate_code(value)
    except ProtocolError as exc:
        raise PydanticCustomError(NOT_FOUND, "no session {code}: {reason}",
                                  {"code": repr(value[:80]), "reason": str(exc)}) from None


def _path_id(value: int) -> int:
    if value >= INT64:
        raise PydanticCustomError(NOT_FOUND, "no such id {value}", {"value": value})
    return value


# -- bodies --------------------------------------------------------------------------------------

def documented(example: dict[str, Any], optional: bool = False) -> ConfigDict:
    """A body model's config: the example /docs pre-fills for "Try it out", whether it may be left out."""
    extra: dict[str, Any] = {"example": example}
    if optional:
        extra["required"] = False
    return ConfigDict(openapi_extra=extra)  # type: ignore[typeddict-unknown-key]


class Body(BaseModel):
    """A JSON body: strict types, unknown fields rejected."""
    model_config = ConfigDict(strict=True, extra="forbid")


class OptionalBody(Body):
    """A body that may be left out (an empty body is ``{}``)."""
    model_config = documented({}, optional=True)


class NoBody(OptionalBody):
    """No fields: the body may be empty or ``{}``, anything else is a 400."""


class FilterBody(OptionalBody):
    """Play only one target's trials or one trial; ``{}`` clears the filter."""
    model_config = documented({"target_id": 0}, optional=True)
    target_id: Int64 | None = Field(None, description="target index (see /api/trials)")
    trial_id: Int64 | None = Field(None, description="trial id")

    @model_validator(mode="after")
    def _one_at_most(self) -> "FilterBody":
        if self.target_id is not None and self.trial_id is not None:
            raise PydanticCustomError(BAD_REQUEST, "give target_id or trial_id, not both")
        return self

    def args(self) -> dict[str, int]:
        """The `filter` command's arguments: empty (clear) or one of the ids."""
        return self.model_dump(exclude_none=True)


class CreateBody(OptionalBody):
    model_config = documented({"custom_code": "my-experiment-1", "speed": 2.0,
                               "filter": {"target_id": 0}, "noise": "moderate"}, optional=True)
    custom_code: Annotated[str, AfterValidator(_body_code)] | None = Field(
        None, description="the session code to use (else one is generated)",
        json_schema_extra={"pattern": CODE_PATTERN})
    speed: Number | None = Field(None, description="playback speed, 0.1-1000 (default 1)")
    loop: bool | None = Field(None, description="restart at the end (default true)")
    paused: bool | None = Field(None, description="create paused (default false)")
    filter: FilterBody | None = Field(None, description="`{target_id}` or `{trial_id}`")
    noise: Noise = None
    withhold_labels: bool | None = Field(
        None, description="stream no kinematics, intention or target; still scored (default false)")
    lockstep: bool | None = Field(
        None, description="publish the next bin only once a decoder answered the current one")
    lockstep_timeout_ms: Number | None = Field(
        None, description="how long lock-step waits for an answer, 1-60000 ms (default 1000)")
    lsl: bool | None = Field(None, description="mirror as LSL outlets (default: on while fewer "
                                               "than PHANTOM_LSL_MAX_SESSIONS sessions are)")
    perturbations: Perturbations = None


class SeekBody(OptionalBody):
    """Exactly one of the two, here or (the original's form) as `?position_seconds=`."""
    model_config = documented({"packet_id": 1000}, optional=True)
    packet_id: Int64 | None = Field(None, description="0 .. total_packets-1")
    position_seconds: Number | None = Field(
        None, description="alternative: seconds into the recording; playback goes to the bin "
        "containing that time (8.075 s is bin 323 at 25 ms)")

    @model_validator(mode="after")
    def _one_at_most(self) -> "SeekBody":
        if self.packet_id is not None and self.position_seconds is not None:
            raise PydanticCustomError(BAD_REQUEST, "give packet_id or position_seconds, not both")
        return self


class SpeedBody(Body):
    model_config = documented({"speed": 2.0})
    speed: Number = Field(description="0.1-1000")


class LoopBody(Body):
    model_config = documented({"loop": False})
    loop: bool


class NoiseBody(Body):
    model_config = documented({"noise": "moderate"})
    noise: Noise


class LslBody(Body):
    enabled: bool = Field(description="true: mirror the session as LSL outlets; false: stop")
class PerturbationsBody(Body):
    """A session's whole perturbation schedule (it replaces the previous one)."""
    model_config = documented({"seed": 7, "items": [
        {"kind": "dropout", "id": "drop20", "fraction": 0.2, "start_s": 120, "ramp_s": 30},
        {"kind": "noise", "preset": "moderate"}]})
    seed: Int64 | None = Field(None, description="keys every draw, with the session code "
                                                 "(a random one is chosen and reported if absent)")
    items: list[Annotated[dict[str, Any], BeforeValidator(lambda v: _wire_range(v, "items[]"))]] = Field(
        description="the perturbations: docs/perturbations.md, or GET /api/perturbations/kinds",
        json_schema_extra={"items": PERTURBATION_ITEM})


# -- paths and queries ---------------------------------------------------------------------------

class SessionPath(BaseModel):
    code: Annotated[str, AfterValidator(_path_code)] = Field(
        description="session code: 1-64 of a-z 0-9 -, starting and ending with a letter or digit",
        json_schema_extra={"pattern": CODE_PATTERN})


class TrialPath(BaseModel):
    trial_id: Annotated[int, AfterValidator(_path_id)] = Field(ge=0, description="trial id")


class TargetPath(BaseModel):
    target_id: Annotated[int, AfterValidator(_path_id)] = Field(ge=0, description="target index")


class Query(BaseModel):
    """Query parameters (strings, converted). Unknown ones are ignored.

    flask-openapi3 asks a query model for its JSON schema on every request; the schema never
    changes, so it is computed once per model (about 150 us a request otherwise).
    """

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _schema_once(cls, args, tuple(sorted(kwargs.items())))


@cache
def _schema_once(model: type[BaseModel], args: tuple, kwargs: tuple) -> dict[str, Any]:
    return super(Query, model).model_json_schema(*args, **dict(kwargs))


class CreateQuery(Query):
    custom_code: str | None = Field(None, description="the original server's form of "
                                                      "`custom_code` (the body's wins)")


class EvaluationQuery(Query):
    decoder: str | None = Field(None, description="only this decoder")
    window: str | None = Field(None, description="`trial` (every observed bin of a trial, default) "
                                                 "or `move` (move onset -250..+450 ms, NLB's)")
    lag_ms: Number | None = Field(None, description="behaviour lag, 0-10000 ms (default 0)")
    radius_mm: Number | None = Field(None, description="reach target radius (default 20 mm)")
    hold_ms: Number | None = Field(None, description="reach hold time (default 200 ms)")


class SeekQuery(Query):
    position_seconds: Number | None = Field(None, description="the original server's form of "
                                                              "`position_seconds` (without a body)")
