"""What a perturbation request may say: the kinds, their parameters and ranges, their presets
(each with its source), and the parser that turns a request into validated, normalised items.

A perturbation set is ``{"seed": int?, "items": [item, ...]}``. An item is a map with ``kind``,
an optional ``id`` (default ``<kind>-<n>``), an optional ``preset`` (the kind's preset to start
from), the kind's parameters, and schedule fields (see broker.perturb.schedule). Anything unknown
is ``bad_request``; a value outside its range is ``out_of_range``.
"""
from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from broker.perturb.schedule import SCHEDULE_FIELDS, Schedule, parse_schedule
from protocol.commands import CommandError, ErrorCode

MAX_ITEMS = 32
MAX_SEED = 2**63 - 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Param:
    """One parameter: type ``number``, ``int``, ``choice`` or ``units`` (a list of unit indices)."""
    type: str
    default: Any
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]
    source: str


@dataclass(frozen=True)
class Kind:
    name: str
    domain: str                 # "neural" (changes counts) or "transport" (changes delivery)
    models: str
    params: dict[str, Param]
    presets: dict[str, Preset] = field(default_factory=dict)


_ORIGINAL = "the original PhantomLink's stress levels (NoiseInjectionMiddleware)"
_CHOICE = "PhantomLink's choice (no published magnitude); adjust to your array"

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("noise", "neural", "zero-mean count noise whose SD grows with the count (the original's noise_std)",
         {"noise_std": Param("number", 0.5, 0.0, 100.0)},
         {"light": Preset({"noise_std": 0.2}, _ORIGINAL), "moderate": Preset({"noise_std": 0.5}, _ORIGINAL),
          "intense": Preset({"noise_std": 1.0}, _ORIGINAL), "extreme": Preset({"noise_std": 2.0}, _ORIGINAL)}),
    Kind("drift", "neural", "slow multiplicative rate drift: a slow and a fast sine, per-channel amplitude",
         {"drift_amplitude": Param("number", 0.3, 0.0, 1.0),
          "drift_period_seconds": Param("number", 60.0, 0.001, 1e7)},
         {"light": Preset({"drift_amplitude": 0.1}, _ORIGINAL), "moderate": Preset({"drift_amplitude": 0.3}, _ORIGINAL),
          "intense": Preset({"drift_amplitude": 0.5}, _ORIGINAL), "extreme": Preset({"drift_amplitude": 0.8}, _ORIGINAL)}),
    Kind("dropout", "neural", "channels lost: silenced, or carrying noise at the unit's mean rate",
         {"fraction": Param("number", 0.2), "units": Param("units", None),
          "mode": Param("choice", "silence", choices=("silence", "noise"))},
         {"fifth": Preset({"fraction": 0.2}, "the issue's example; speech-BCI training keeps a random subset of units (Willett et al.)"),
          "half": Preset({"fraction": 0.5}, _CHOICE)}),
    Kind("gain", "neural", "per-unit gain changes (spike amplitude changes move units across the threshold)",
         {"fraction": Param("number", 0.74), "sd": Param("number", 0.2, 0.0, 2.0), "units": Param("units", None)},
         {"perge2013": Preset({"fraction": 0.74, "sd": 0.2},
                              "Perge et al. 2013: 74 % of units change spike amplitude within a day; the SD of the log gain is a choice")}),
    Kind("offset", "neural", "a constant per-channel offset drawn anew for every trial",
         {"sd": Param("number", 0.2, 0.0, 10.0)},
         {"willett": Preset({"sd": 0.2}, "Willett et al. (speech BCI): per-trial, per-channel constant offset SD 0.2 of the normalised feature")}),
    Kind("tuning_drift", "neural", "slow drift of every unit's rate: a constant offset plus a random walk",
         {"offset_sd": Param("number", 0.05, 0.0, 10.0), "step_sd": Param("number", 0.01, 0.0, 1.0)},
         {"willett": Preset({"offset_sd": 0.05, "step_sd": 0.01},
                            "speech-BCI training (Willett et al.): offset SD 0.05 plus a random walk of SD 0.01 per 20 ms step")}),
    Kind("nonstationarity", "neural", "firing rates of a fraction of units change, each by its own factor",
         {"fraction": Param("number", 0.84), "magnitude": Param("number", 0.49, 0.0, 5.0)},
         {"perge2013": Preset({"fraction": 0.84, "magnitude": 0.49},
                              "Perge et al. 2013: 84 % of units change rate within a day, by 3.8 +- 8.7 Hz, about 49 % of their mean")}),
    Kind("micro_movement", "neural", "array micro-movement: a gain change smooth across channels, and units moving to a neighbouring channel",
         {"amplitude": Param("number", 0.3, 0.0, 2.0), "length": Param("number", 10.0, 1.0, 1000.0),
          "shift_fraction": Param("number", 0.1)},
         {"perge2013": Preset({"amplitude": 0.3, "length": 10.0, "shift_fraction": 0.1},
                              "Perge et al. 2013 report changes correlated across electrodes in 40 % of sessions; the magnitudes are a choice")}),
    Kind("turnover", "neural", "neuron turnover: units disappear, and new units (mixing two others' tuning) appear on other channels",
         {"lost": Param("number", 0.05), "new": Param("number", 0.05)},
         {"daily": Preset({"lost": 0.05, "new": 0.05}, _CHOICE)}),
    Kind("sorting", "neural", "spike-sorting errors: a unit merged into its neighbour, or split with a share of its spikes given to one",
         {"merge": Param("number", 0.05, 0.0, 0.5), "split": Param("number", 0.05, 0.0, 0.5),
          "split_share": Param("number", 0.5)},
         {"typical": Preset({"merge": 0.05, "split": 0.05, "split_share": 0.5}, _CHOICE)}),
    Kind("drop", "transport", "independent packet loss",
         {"rate": Param("number", 0.01)},
         {"lossy": Preset({"rate": 0.01}, _CHOICE)}),
    Kind("burst_drop", "transport", "bursty loss: a Gilbert-Elliott two-state channel",
         {"p_enter": Param("number", 0.01), "p_exit": Param("number", 0.3),
          "loss_bad": Param("number", 1.0), "loss_good": Param("number", 0.0)},
         {"wireless": Preset({"p_enter": 0.01, "p_exit": 0.3, "loss_bad": 1.0, "loss_good": 0.0},
                             "Gilbert-Elliott channel with mean bursts of 3.3 packets, 3 % loss; a choice")}),
    Kind("latency", "transport", "extra delivery latency with jitter (a jittered packet can overtake its predecessor)",
         {"delay_ms": Param("number", 20.0, 0.0, 5000.0), "jitter_ms": Param("number", 5.0, 0.0, 5000.0)},
         {"wifi": Preset({"delay_ms": 5.0, "jitter_ms": 3.0}, _CHOICE)}),
    Kind("duplicate", "transport", "packets delivered twice (the copy is marked duplicate)",
         {"rate": Param("number", 0.01)},
         {"rare": Preset({"rate": 0.01}, _CHOICE)}),
    Kind("reorder", "transport", "a packet held back and delivered right after the next one",
         {"rate": Param("number", 0.01)},
         {"rare": Preset({"rate": 0.01}, _CHOICE)}),
    Kind("clock_drift", "transport", "the sender's clock runs fast or slow by a constant rate error",
         {"ppm": Param("number", 100.0, -10000.0, 10000.0)},
         {"crystal": Preset({"ppm": 50.0}, "quartz oscillators are specified to +-20..100 ppm; 50 ppm is a typical part")}),
    Kind("freeze", "transport", "the sender stalls, then delivers the held packets at once (burst) or never (skip)",
         {"rate_per_min": Param("number", 1.0, 0.0, 600.0), "duration_ms": Param("number", 500.0, 1.0, 6000.0),
          "mode": Param("choice", "burst", choices=("burst", "skip"))},
         {"stall": Preset({"rate_per_min": 1.0, "duration_ms": 500.0, "mode": "burst"}, _CHOICE)}),
)}

# The original `noise` argument's presets: (noise_std, drift_amplitude).
LEGACY_PRESETS: dict[str, tuple[float, float]] = {
    name: (KINDS["noise"].presets[name].values["noise_std"], KINDS["drift"].presets[name].values["drift_amplitude"])
    for name in ("light", "moderate", "intense", "extreme")}


@dataclass(frozen=True)
class Item:
    """One validated perturbation."""
    id: str
    kind: str
    params: dict[str, Any]
    schedule: Schedule
    preset: str | None = None

    @property
    def domain(self) -> str:
        return KINDS[self.kind].domain

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, **self.params, **self.schedule.to_dict()}
        if self.preset:
            out["preset"] = self.preset
        return out


@dataclass(frozen=True)
class PerturbationSet:
    seed: int
    items: tuple[Item, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "items": [item.to_dict() for item in self.items]}


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message[:300])


def _range(message: str) -> CommandError:
    return CommandError(ErrorCode.OUT_OF_RANGE, message[:300])


def _number(where: str, name: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise _bad(f"{where}.{name} must be {'an integer' if integer else 'a number'}")
    if math.isnan(value) or not low <= value <= high:
        raise _range(f"{where}.{name} must be in [{low}, {high}], got {value}")
    return value


def _param(where: str, name: str, spec: Param, value: Any, n_units: int) -> Any:
    if spec.type == "choice":
        if value not in spec.choices:
            raise _bad(f"{where}.{name} must be one of {', '.join(spec.choices)}")
        return value
    if spec.type == "units":
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > n_units:
            raise _bad(f"{where}.{name} must be a list of unit indices")
        units = [int(_number(where, name, v, 0, n_units - 1, integer=True)) for v in value]
        if len(set(units)) != len(units):
            raise _bad(f"{where}.{name} lists a unit twice")
        return sorted(units)
    return float(_number(where, name, value, spec.low, spec.high))


def parse_item(raw: Any, index: int, bin_ms: int, n_units: int) -> Item:
    where = f"perturbations[{index}]"
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be a map with a `kind`")
    kind = KINDS.get(raw.get("kind")) if isinstance(raw.get("kind"), str) else None
    if kind is None:
        raise _bad(f"{where}.kind must be one of {', '.join(KINDS)}")
    allowed = {"kind", "id", "preset", *kind.params, *SCHEDULE_FIELDS}
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise _bad(f"{where}: unknown field(s) {', '.join(unknown)} for kind {kind.name}")
    values = {name: p.default for name, p in kind.params.items()}
    preset = raw.get("preset")
    if preset is not None:
        if preset not in kind.presets:
            raise _bad(f"{where}.preset must be one of {', '.join(kind.presets)}")
        values.update(kind.presets[preset].values)
    for name, spec in kind.params.items():
        if name in raw:
            values[name] = _param(where, name, spec, raw[name], n_units)
    item_id = raw.get("id", f"{kind.name}-{index}")
    if not isinstance(item_id, str) or not _ID.match(item_id):
        raise _bad(f"{where}.id must be 1-40 of A-Z a-z 0-9 _ . - (starting with a letter or digit)")
    schedule = parse_schedule(raw, bin_ms, lambda n, lo, hi, integer: _number(where, n, raw[n], lo, hi, integer))
    return Item(item_id, kind.name, values, schedule, preset)


def parse_set(value: Any, bin_ms: int, n_units: int) -> PerturbationSet | None:
    """A perturbation set from a command argument: a map ``{seed?, items}``, a bare list of items,
    or nil / an empty list for none. Without ``seed`` a random one is chosen (and reported back)."""
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, list):
        value = {"items": value}
    if not isinstance(value, dict):
        raise _bad("perturbations must be a map {seed?, items} or a list of items")
    unknown = sorted(str(k) for k in value if k not in ("seed", "items"))
    if unknown:
        raise _bad(f"perturbations: unknown field(s) {', '.join(unknown)}")
    items = value.get("items", [])
    if not isinstance(items, list):
        raise _bad("perturbations.items must be a list")
    if len(items) > MAX_ITEMS:
        raise _range(f"at most {MAX_ITEMS} perturbations per session, got {len(items)}")
    seed = value.get("seed")
    seed = secrets.randbits(31) if seed is None else int(_number("perturbations", "seed", seed, 0, MAX_SEED, True))
    parsed = tuple(parse_item(raw, i, bin_ms, n_units) for i, raw in enumerate(items))
    ids = [item.id for item in parsed]
    if len(set(ids)) != len(ids):
        raise _bad("perturbation ids must be unique")
    return PerturbationSet(seed, parsed) if parsed else None


def catalogue() -> dict[str, Any]:
    """Every kind with its parameters and presets (served to clients and used by the docs)."""
    return {k.name: {"domain": k.domain, "models": k.models,
                     "params": {n: {"type": p.type, "default": p.default,
                                    **({"range": [p.low, p.high]} if p.type == "number" else {}),
                                    **({"choices": list(p.choices)} if p.choices else {})}
                                for n, p in k.params.items()},
                     "presets": {n: {**p.values, "source": p.source} for n, p in k.presets.items()}}
            for k in KINDS.values()}
