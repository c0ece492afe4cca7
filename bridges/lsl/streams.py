"""The four LSL outlets of one mirrored session, and how one broker packet becomes their samples.

Per session ``<code>``, with ``<name>`` = PHANTOM_LSL_STREAM_NAME and ``<id>`` = PHANTOM_LSL_SOURCE_ID:

| stream                    | type                    | format  | channels                                  |
|---------------------------|-------------------------|---------|-------------------------------------------|
| `<name>-Neural-<code>`    | PHANTOM_LSL_STREAM_TYPE | int32   | one per unit, label = unit id              |
| `<name>-Kinematics-<code>`| `Kinematics`            | float32 | vx, vy (mm/s), x, y (mm); NaN where nil    |
| `<name>-Intention-<code>` | `Intention`             | float32 | target_id, target_x, target_y (mm), trial_id; ids -1 and positions NaN where nil |
| `<name>-Markers-<code>`   | `Markers`               | string  | one irregular sample per trial event: `"<event> trial=<id>"` (markers.py) |

Source ids are ``<id>-<kind>-<code>`` (kind in lower case), the original's form, so a recorder that
saw a session once reconnects to it. Every sample of one packet carries the same timestamp: the
LSL-clock time at which the broker scheduled the bin, ``local_clock() - (time.time() - scheduled_at)``
(see lsl_timestamp).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pylsl

from bridges.lsl.markers import TrialEvents
from protocol.config import Config

NAN = float("nan")
MANUFACTURER = "PhantomLink"

# (label, unit, type) per channel, in sample order.
KINEMATICS_CHANNELS = (("vx", "mm/s", "velocity"), ("vy", "mm/s", "velocity"),
                       ("x", "mm", "position"), ("y", "mm", "position"))
INTENTION_CHANNELS = (("target_id", "index", "target"), ("target_x", "mm", "target"),
                      ("target_y", "mm", "target"), ("trial_id", "index", "trial"))
MARKER_CHANNELS = (("event", "", "marker"),)


def lsl_timestamp(unix_time: float) -> float:
    """The LSL-clock time of a Unix time: LSL's now minus how long ago that Unix time was.

    The two clocks are read back to back, so the error is their read jitter (about a microsecond);
    reading them per packet follows any slewing of the wall clock.
    """
    return pylsl.local_clock() - (time.time() - unix_time)


def _number(value: Any) -> float:
    """A float sample value; nil becomes NaN. Anything else is a malformed packet."""
    if value is None:
        return NAN
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number or nil, got {type(value).__name__}")
    return float(value)


def _index(value: Any) -> float:
    """An id as a float32 sample value; nil becomes -1 (ids are never negative)."""
    if value is None:
        return -1.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer id or nil, got {type(value).__name__}")
    return float(value)


class SessionOutlets:
    """The outlets of one session; destroyed (undiscoverable, inlets see the end) by close()."""

    def __init__(self, code: str, config: Config, dataset: dict[str, Any], trials: TrialEvents):
        self.code = code
        self.trials = trials
        self.n_units = int(dataset["num_channels"])
        rate = 1000.0 / float(dataset["bin_size_ms"])
        make = _StreamFactory(code, config, dataset)
        units = [(str(u), "spikes", "spike_count", region)
                 for u, region in zip(dataset["unit_ids"], dataset["regions"])]
        self.neural = make.outlet("Neural", config.lsl_stream_type, pylsl.cf_int32, rate, units)
        self.kinematics = make.outlet("Kinematics", "Kinematics", pylsl.cf_float32, rate,
                                      KINEMATICS_CHANNELS)
        self.intention = make.outlet("Intention", "Intention", pylsl.cf_float32, rate,
                                     INTENTION_CHANNELS)
        self.markers = make.outlet("Markers", "Markers", pylsl.cf_string, pylsl.IRREGULAR_RATE,
                                   MARKER_CHANNELS)
        self.pushed = 0
        self.active: list[str] = []          # perturbation ids active at the last packet

    def push(self, data: dict[str, Any]) -> None:
        """Push one packet's `data` map; ValueError/TypeError/KeyError (and nothing pushed) if malformed."""
        counts = np.asarray(data["spikes"]["spike_counts"])
        if counts.shape != (self.n_units,) or counts.dtype.kind not in "iu":
            raise ValueError(f"spike_counts must be a list of {self.n_units} integer counts")
        kin, intent, trial_id = data["kinematics"], data["intention"], data["trial_id"]
        kinematics = [_number(kin["vx"]), _number(kin["vy"]), _number(kin["x"]), _number(kin["y"])]
        intention = [_index(intent["target_id"]), _number(intent["target_x"]),
                     _number(intent["target_y"]), _index(trial_id)]
        markers = [self._marker(event, data["timestamp"]) for event in data.get("events") or ()]
        markers += self._perturbation_markers(data)
        timestamp = lsl_timestamp(_number(data["scheduled_at"]))
        if math.isnan(timestamp):
            raise ValueError("scheduled_at is nil")
        # Everything is checked above: a malformed packet reaches no stream at all. A one-sample
        # chunk from a numpy buffer costs a third of push_sample's per-channel ctypes conversion.
        self.neural.push_chunk(counts.astype(np.int32).reshape(1, -1), timestamp)
        self.kinematics.push_sample(kinematics, timestamp)
        self.intention.push_sample(intention, timestamp)
        for marker in markers:
            self.markers.push_sample([marker], timestamp)
        self.pushed += 1

    def _perturbation_markers(self, data: dict[str, Any]) -> list[str]:
        """``perturbation_start id=<id>`` / ``perturbation_end id=<id>`` where the active set of
        this packet differs from the last one's (a duplicate copy changes nothing)."""
        active = data.get("perturbations") or []
        if data.get("duplicate") or active == self.active:
            return []
        if not isinstance(active, list) or not all(isinstance(i, str) for i in active):
            raise TypeError("perturbations must be a list of ids")
        out = [f"perturbation_end id={i}" for i in self.active if i not in active]
        out += [f"perturbation_start id={i}" for i in active if i not in self.active]
        self.active = list(active)
        return out

    def _marker(self, event: Any, bin_left: Any) -> str:
        if not isinstance(event, str):
            raise TypeError(f"event names are strings, got {type(event).__name__}")
        return self.trials.label(event, _number(bin_left))

    def close(self) -> None:
        # liblsl destroys an outlet when its last Python reference goes; we hold the only ones.
        del self.neural, self.kinematics, self.intention, self.markers


class _StreamFactory:
    """Builds one session's StreamInfos: names, source ids and the shared description."""

    def __init__(self, code: str, config: Config, dataset: dict[str, Any]):
        self.code, self.config, self.dataset = code, config, dataset

    def outlet(self, kind: str, stream_type: str, fmt: int, rate: float,
               channels: Any) -> pylsl.StreamOutlet:
        channels = list(channels)
        info = pylsl.StreamInfo(
            name=f"{self.config.lsl_stream_name}-{kind}-{self.code}", type=stream_type,
            channel_count=len(channels), nominal_srate=rate, channel_format=fmt,
            source_id=f"{self.config.lsl_source_id}-{kind.lower()}-{self.code}")
        self._describe(info.desc(), channels)
        return pylsl.StreamOutlet(info)

    def _describe(self, desc: pylsl.info.XMLElement, channels: list[tuple[str, ...]]) -> None:
        xml_channels = desc.append_child("channels")
        for label, unit, kind, *region in channels:
            channel = xml_channels.append_child("channel")
            channel.append_child_value("label", label)
            channel.append_child_value("unit", unit)
            channel.append_child_value("type", kind)
            if region:
                channel.append_child_value("region", region[0])
        binning = desc.append_child("binning")
        binning.append_child_value("bin_width_ms", str(self.dataset["bin_size_ms"]))
        binning.append_child_value("alignment", "left")
        binning.append_child_value("timestamp", "scheduled time of the bin (its left edge on the replay clock)")
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", MANUFACTURER)
        acquisition.append_child_value("dataset", str(self.dataset["dataset"]))
        acquisition.append_child_value("source", str(self.dataset.get("source", "")))
        desc.append_child_value("session", self.code)
