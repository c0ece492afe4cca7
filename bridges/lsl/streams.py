"""The four LSL outlets of one mirrored session, and how one broker packet becomes their samples.

Per session ``<code>``, with ``<name>`` = PHANTOM_LSL_STREAM_NAME and ``<id>`` = PHANTOM_LSL_SOURCE_ID:

| stream                    | type                    | format  | channels                                  |
|---------------------------|-------------------------|---------|-------------------------------------------|
| `<name>-Neural-<code>`    | PHANTOM_LSL_STREAM_TYPE | int32   | one per unit, label = unit id              |
| `<name>-Kinematics-<code>`| `Kinematics`            | float32 | vx, vy (mm/s), x, y (mm); NaN where nil    |
| `<name>-Intention-<code>` | `Intention`             | float32 | target_id, target_x, target_y (mm), trial_id; ids -1 and positions NaN where nil |
| `<name>-Markers-<code>`   | `Markers`               | string  | one irregular sample per trial event: `"<event> trial=<id>"` (markers.py) |

Source ids are ``<id>-<kind>-<code>`` (kind in lower case), the original's form, so a recorder that
saw a session once reconnects to it.

Timestamps are on the ``pylsl.local_clock()`` timeline, which on Linux is CLOCK_MONOTONIC, the clock
of the packets' ``scheduled_mono``: the Neural, Kinematics and Intention samples of a packet carry
the moment its bin closed (``scheduled_mono`` itself, when the broker runs on this host: see
Clocks), and each marker carries its event's own time, ``event_offsets_ms`` into the bin, on the
same timeline (``scheduled_mono - (bin_ms - offset) / 1000 / speed``).
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

    Only for a broker on another host (see Clocks): it follows the wall clocks of both hosts, so it
    is as good as their synchronisation, and jumps when NTP steps one of them.
    """
    return pylsl.local_clock() - (time.time() - unix_time)


class Clocks:
    """Whether the broker's ``scheduled_mono`` is on this host's CLOCK_MONOTONIC (= local_clock()).

    Decided once, from the first packet that carries both clocks: on one host, how long ago the
    packet was due reads the same on the monotonic and on the wall clock (to microseconds); on
    another host the two monotonic clocks differ by an arbitrary offset (their uptimes). Same host:
    samples are stamped with ``scheduled_mono`` directly, with no wall clock involved. Otherwise
    (documented fallback): ``lsl_timestamp(scheduled_at)``, through both hosts' wall clocks.
    """

    AGREE_S = 0.05

    def __init__(self) -> None:
        self.same_host: bool | None = None

    def decide(self, data: dict[str, Any]) -> bool:
        if self.same_host is None:
            mono_ago = time.monotonic() - _number(data["scheduled_mono"])
            wall_ago = time.time() - _number(data["scheduled_at"])
            self.same_host = abs(mono_ago - wall_ago) < self.AGREE_S
        return self.same_host

    def bin_close(self, data: dict[str, Any]) -> float:
        """The LSL time at which the packet's bin closed."""
        if data.get("scheduled_mono") is not None and self.decide(data):
            return _number(data["scheduled_mono"])
        return lsl_timestamp(_number(data["scheduled_at"]))


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
    """The outlets of one session. They are never destroyed one by one: they end with their
    process, the session's outlet host (host.py), which is killed when the session goes."""

    def __init__(self, code: str, config: Config, dataset: dict[str, Any], trials: TrialEvents,
                 clocks: Clocks, speed: float = 1.0):
        self.code = code
        self.trials = trials
        self.clocks = clocks
        self.speed = speed              # the session's; kept up to date from its metadata
        self.bin_s = float(dataset["bin_size_ms"]) / 1000.0
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
        timestamp = self.clocks.bin_close(data)
        if math.isnan(timestamp):
            raise ValueError("scheduled_mono and scheduled_at are nil")
        markers = self._markers(data, timestamp)
        # perturbation changes are stamped at the bin's start, where the packet's active set begins
        bin_start = timestamp - self.bin_s / self.speed
        markers += [(label, bin_start) for label in self._perturbation_markers(data)]
        # Everything is checked above: a malformed packet reaches no stream at all. A one-sample
        # chunk from a numpy buffer costs a third of push_sample's per-channel ctypes conversion.
        self.neural.push_chunk(counts.astype(np.int32).reshape(1, -1), timestamp)
        self.kinematics.push_sample(kinematics, timestamp)
        self.intention.push_sample(intention, timestamp)
        for marker, at in markers:
            self.markers.push_sample([marker], at)
        self.pushed += 1

    def _markers(self, data: dict[str, Any], bin_close: float) -> list[tuple[str, float]]:
        """(label, LSL time) of each event: its offset into the bin, at the session's speed."""
        events = data.get("events") or ()
        offsets = data.get("event_offsets_ms")
        if offsets is None:
            offsets = [0.0] * len(events)
        if len(offsets) != len(events):
            raise ValueError("event_offsets_ms is not parallel to events")
        bin_start = bin_close - self.bin_s / self.speed
        return [(self._marker(event, data["timestamp"]), bin_start + _number(off) / 1000.0 / self.speed)
                for event, off in zip(events, offsets)]

    def consumed(self) -> bool:
        """Whether any of the four outlets has a consumer (an inlet connected to it)."""
        return any(o.have_consumers() for o in (self.neural, self.kinematics, self.intention,
                                                 self.markers))

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
        binning.append_child_value("alignment", "right")
        binning.append_child_value("timestamp", "the moment the bin closed on the replay clock (the "
                                   "bin covers bin_width_ms / speed before it); markers: the event's own time")
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", MANUFACTURER)
        acquisition.append_child_value("dataset", str(self.dataset["dataset"]))
        acquisition.append_child_value("source", str(self.dataset.get("source", "")))
        desc.append_child_value("session", self.code)
