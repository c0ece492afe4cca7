"""The original's `noise` argument (presets and parameter names), mapped onto the perturbation
engine: `noise_std` becomes a `noise` item (zero-mean noise of SD about noise_std * (count + 1))
and `drift_amplitude` / `drift_period_seconds` a `drift` item (a slow and a fast sine with
per-channel amplitudes), ids `legacy-noise` and `legacy-drift`, both always on. `seed` keys their
draws (with the session code). broker.perturb.neural and docs/perturbations.md say exactly what
each does; this module only parses, validates and restores the settings.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from broker.perturb.engine import legacy_items
from broker.perturb.spec import LEGACY_PRESETS as PRESETS, Item
from protocol.commands import CommandError, ErrorCode

DEFAULT_DRIFT_PERIOD_S = 60.0
MAX_NOISE_STD = 100.0
MAX_SEED = 2**63 - 1
_PARAMS = ("preset", "noise_std", "drift_amplitude", "drift_period_seconds",
           "enable_noise", "enable_drift", "seed")


@dataclass(frozen=True)
class NoiseSettings:
    noise_std: float
    drift_amplitude: float
    drift_period_seconds: float = DEFAULT_DRIFT_PERIOD_S
    enable_noise: bool = True
    enable_drift: bool = True
    seed: int = 0
    preset: str | None = None

    @property
    def active(self) -> bool:
        """Whether applying these settings can change any count."""
        return ((self.enable_noise and self.noise_std > 0)
                or (self.enable_drift and self.drift_amplitude > 0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def items(self) -> list[Item]:
        """These settings as perturbation-engine items (none when nothing is enabled)."""
        return legacy_items(self.noise_std, self.drift_amplitude, self.drift_period_seconds,
                            self.enable_noise, self.enable_drift)


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


def _number(params: dict[str, Any], name: str, low: float, high: float) -> float | None:
    if name not in params:
        return None
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"noise.{name} must be a number")
    if not (low <= value <= high) or math.isnan(value):
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"noise.{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _flag(params: dict[str, Any], name: str) -> bool | None:
    if name not in params:
        return None
    if not isinstance(params[name], bool):
        raise _bad(f"noise.{name} must be a bool")
    return params[name]


def _preset(name: Any) -> NoiseSettings:
    if not isinstance(name, str) or name not in PRESETS:
        raise _bad(f"unknown noise preset {str(name)[:40]!r}; use one of {', '.join(PRESETS)}")
    std, amp = PRESETS[name]
    return NoiseSettings(noise_std=std, drift_amplitude=amp, preset=name)


def parse_noise(value: Any) -> NoiseSettings | None:
    """The `noise` argument -> settings, or None for off. CommandError when it is invalid.

    A preset name; a map of parameters (optionally starting from ``preset``); nil or false: off.
    Without ``seed`` a random one is chosen and reported back, so any run can be reproduced.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return replace(_preset(value), seed=secrets.randbits(31))
    if not isinstance(value, dict):
        raise _bad("noise must be a preset name, a map of parameters, or nil/false")
    unknown = sorted(str(k) for k in value if k not in _PARAMS)
    if unknown:
        raise _bad(f"unknown noise parameter(s): {', '.join(unknown)[:200]}")
    base = _preset(value["preset"]) if "preset" in value else NoiseSettings(0.0, 0.0)
    changes: dict[str, Any] = {
        "noise_std": _number(value, "noise_std", 0.0, MAX_NOISE_STD),
        "drift_amplitude": _number(value, "drift_amplitude", 0.0, 1.0),
        "drift_period_seconds": _number(value, "drift_period_seconds", 0.001, 1e7),
        "enable_noise": _flag(value, "enable_noise"),
        "enable_drift": _flag(value, "enable_drift"),
    }
    seed = value.get("seed")
    if seed is None:
        seed = secrets.randbits(31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise CommandError(ErrorCode.OUT_OF_RANGE, f"noise.seed must be an int in [0, {MAX_SEED}]")
    changes["seed"] = seed
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def from_saved(data: dict[str, Any] | None) -> NoiseSettings | None:
    """Settings restored from the state file, validated again like a command argument."""
    if not data:
        return None
    settings = parse_noise({k: v for k, v in data.items() if k in _PARAMS and k != "preset"})
    preset = data.get("preset")
    return replace(settings, preset=preset if preset in PRESETS else None) if settings else None
