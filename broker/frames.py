"""The bytes the broker publishes: per-bin msgpack fragments built once, spliced per send.

A `data` payload is ``{"v", "type", "session", "data": {17 fields}}``. Ten of the data fields
depend only on the bin (timestamp, packet_id, kinematics, intention, trial_id, trial_time_ms,
observed, events, event_offsets_ms and, unperturbed, spikes) and are encoded once at start-up; the
session prefix is encoded once per session; only sequence_number, noise, perturbations (cached
per id list), scheduled_mono, duplicate, scheduled_at and sent_at are encoded per send, in that
order, so `duplicate` and `sent_at` sit at fixed offsets from the end and a held or duplicated
packet is re-stamped in place. A
msgpack map is its header followed by key/value pairs in any order, so concatenating fragments
gives exactly what ``msgpack.packb`` of the whole dict would decode to.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np

from broker.recording import Recording
from protocol.wire import PROTOCOL_VERSION

_pack = msgpack.Packer(use_bin_type=True).pack
_double = struct.Struct(">d").pack
DATA_FIELDS = 17            # 10 static + spikes + 7 per-send fields (a map16 header)

_K_SEQ = _pack("sequence_number")
_K_NOISE_ON = _pack("noise") + b"\xc3"
_K_NOISE_OFF = _pack("noise") + b"\xc2"
_K_SCHEDULED = _pack("scheduled_at") + b"\xcb"
_K_SENT = _pack("sent_at") + b"\xcb"
_K_SCHEDULED_MONO = _pack("scheduled_mono") + b"\xcb"
_K_SPIKES = _pack("spikes")
WITHHELD_KINEMATICS = {"x": None, "y": None, "vx": None, "vy": None}
WITHHELD_INTENTION = {"target_id": None, "target_x": None, "target_y": None,
                      "distance_to_target": None}
_K_DUPLICATE = _pack("duplicate")
_K_PERTURBATIONS = _pack("perturbations")
_NO_PERTURBATIONS = _K_PERTURBATIONS + _pack([])
_SENT_AT = -8                                            # offset of sent_at's 8 bytes
_DUPLICATE_FLAG = _SENT_AT - len(_K_SENT) - 8 - len(_K_SCHEDULED) - 1
_FALSE, _TRUE = b"\xc2", b"\xc3"
_SPIKES_HEAD = b"\x82" + _pack("spike_counts")          # {spike_counts, bin_size_ms}


def map_header(n: int) -> bytes:
    """msgpack's header of a map with ``n`` entries."""
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


def restamp(payload: bytes, sent_at: float, duplicate: bool = False) -> bytes:
    """The same packet with another `sent_at` (and marked as a duplicate copy if asked)."""
    if not duplicate:
        return payload[:_SENT_AT] + _double(sent_at)
    return (payload[:_DUPLICATE_FLAG] + _TRUE + payload[_DUPLICATE_FLAG + 1:_SENT_AT]
            + _double(sent_at))


def nil_if_nan(value: Any) -> Any:
    """NaN (a value that does not exist) becomes nil on the wire; numpy scalars become Python."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def map_header(n: int) -> bytes:
    """The msgpack header of a map of ``n`` pairs (fixmap below 16, else map16)."""
    return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")


def _fields(obj: dict[str, Any]) -> bytes:
    """The key/value pairs of a small map without its one-byte fixmap header."""
    packed = _pack(obj)
    return packed[1:] if len(obj) < 16 else packed[3:]     # fixmap or map16 header


class PacketEncoder:
    """Builds `data` payloads for one recording; thread-confined to the broker loop."""

    def __init__(self, recording: Recording):
        self.recording = recording
        self.bin_ms = recording.bin_ms
        self._ids: dict[tuple[str, ...], bytes] = {}
        self._bin_field = _pack("bin_size_ms") + _pack(self.bin_ms)
        self.static = [self._static_fields(i) for i in range(recording.n_bins)]
        # the same fields with nil kinematics and intention, for sessions that withhold labels
        self.static_withheld = [self._static_fields(i, withheld=True) for i in range(recording.n_bins)]
        counts = recording.counts
        self.spikes = [self.spikes_fragment(counts[i].tolist()) for i in range(recording.n_bins)]

    def _static_fields(self, i: int, withheld: bool = False) -> bytes:
        rec = self.recording
        trial_idx = int(rec.trial_index[i])
        return _fields({
            "timestamp": rec.t0 + i * rec.bin_ms / 1000.0,
            "packet_id": i,
            "kinematics": WITHHELD_KINEMATICS if withheld else self._kinematics(i),
            "intention": WITHHELD_INTENTION if withheld else self._intention(i),
            "trial_id": rec.trials[trial_idx].trial_id if trial_idx >= 0 else None,
            "trial_time_ms": nil_if_nan(rec.trial_time_ms[i]),
            "observed": bool(rec.observed[i]),
            "events": list(rec.events.get(i, ())),
            "event_offsets_ms": list(rec.event_offsets_ms.get(i, ())),
        })

    def _kinematics(self, i: int) -> dict[str, Any]:
        rec = self.recording
        return {"x": nil_if_nan(rec.cursor[i, 0]), "y": nil_if_nan(rec.cursor[i, 1]),
                "vx": nil_if_nan(rec.velocity[i, 0]), "vy": nil_if_nan(rec.velocity[i, 1])}

    def _intention(self, i: int) -> dict[str, Any]:
        rec = self.recording
        target = int(rec.target_id[i])
        return {"target_id": target if target >= 0 else None,
                "target_x": nil_if_nan(rec.target_pos[i, 0]),
                "target_y": nil_if_nan(rec.target_pos[i, 1]),
                "distance_to_target": nil_if_nan(rec.distance[i])}

    def spikes_fragment(self, counts) -> bytes:
        """The `spikes` key/value pair for one bin's (possibly perturbed) counts: a list of ints
        or an integer numpy array (counts of 0..127 are msgpack's one-byte fixints, so such an
        array is its own encoding)."""
        if isinstance(counts, np.ndarray):
            if len(counts) < 65536 and counts.min() >= 0 and counts.max() < 128:
                body = b"\xdc" + struct.pack(">H", len(counts)) + counts.astype(np.uint8).tobytes()
                return _K_SPIKES + _SPIKES_HEAD + body + self._bin_field
            counts = counts.tolist()
        return _K_SPIKES + _pack({"spike_counts": counts, "bin_size_ms": self.bin_ms})

    @staticmethod
    def session_prefix(code: str) -> bytes:
        """Everything of a payload before the data fields: encoded once per session."""
        head = _pack({"v": PROTOCOL_VERSION, "type": "data", "session": code})
        return bytes([head[0] + 1]) + head[1:] + _pack("data") + map_header(DATA_FIELDS)

    def perturbations_fragment(self, ids: tuple[str, ...]) -> bytes:
        """The `perturbations` key/value pair for a tuple of active ids (cached)."""
        if not ids:
            return _NO_PERTURBATIONS
        fragment = self._ids.get(ids)
        if fragment is None:
            if len(self._ids) >= 1024:
                self._ids.clear()
            fragment = self._ids[ids] = _K_PERTURBATIONS + _pack(list(ids))
        return fragment

    def packet(self, prefix: bytes, packet_id: int, sequence: int, spikes: bytes | None,
               scheduled_at: float, sent_at: float, scheduled_mono: float,
               withheld: bool = False, perturbations: tuple[str, ...] = ()) -> bytes:
        """One `data` payload; ``spikes`` is a perturbed spikes fragment or None for the recorded
        one; ``withheld``: kinematics and intention are nil (a session that withholds labels);
        ``perturbations`` the ids active at this packet."""
        noisy = spikes is not None
        return b"".join((
            prefix, (self.static_withheld if withheld else self.static)[packet_id],
            spikes if noisy else self.spikes[packet_id],
            _K_SEQ, _pack(sequence),
            _K_NOISE_ON if noisy else _K_NOISE_OFF,
            self.perturbations_fragment(perturbations),
            _K_SCHEDULED_MONO, _double(scheduled_mono),
            _K_DUPLICATE, _FALSE,
            _K_SCHEDULED, _double(scheduled_at),
            _K_SENT, _double(sent_at),
        ))
