"""What a stream yields: Metadata and Packet objects with numpy arrays, and the sequence check
that marks gaps and drops duplicates."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metadata:
    """A session's stream metadata (the first message of every stream; more may follow)."""

    session: str
    bin_size_ms: int
    unit_ids: np.ndarray
    heldout: np.ndarray | None          # bool per unit (NLB's held-out units), None if unknown
    labels_withheld: bool
    state: str | None                   # the session's state when this was sent
    raw: dict[str, Any] = field(repr=False)

    @property
    def ended(self) -> bool:
        return self.state == "ended"


@dataclass(frozen=True)
class Packet:
    """One bin. Missing values are NaN (floats) or None (ids), as nil is on the wire."""

    session: str
    sequence_number: int
    packet_id: int
    timestamp: float
    spikes: np.ndarray                  # int counts, unit_ids order
    velocity: np.ndarray                # (2,) mm/s; NaN when withheld or unknown
    position: np.ndarray                # (2,) mm
    target_id: int | None
    trial_id: int | None
    observed: bool
    events: tuple[str, ...]
    scheduled_at: float
    sent_at: float
    received_at: float                  # this client's clock (Unix s) when it arrived
    gap: int = 0                        # sequence numbers missing just before this packet
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def metadata_from(msg: dict[str, Any]) -> Metadata:
    data = msg.get("data") or {}
    heldout = data.get("heldout")
    return Metadata(session=str(msg.get("session")), bin_size_ms=int(data.get("bin_size_ms", 0)),
                    unit_ids=np.asarray(data.get("unit_ids") or [], dtype=np.int64),
                    heldout=np.asarray(heldout, dtype=bool) if heldout is not None else None,
                    labels_withheld=bool(data.get("labels_withheld", False)),
                    state=(data.get("session") or {}).get("state"), raw=data)


def packet_from(msg: dict[str, Any], received_at: float) -> Packet:
    d = msg["data"]
    kin = d.get("kinematics") or {}
    intention = d.get("intention") or {}
    return Packet(
        session=str(msg.get("session")), sequence_number=int(d["sequence_number"]),
        packet_id=int(d["packet_id"]), timestamp=float(d.get("timestamp", math.nan)),
        spikes=np.asarray(d["spikes"]["spike_counts"], dtype=np.int64),
        velocity=np.array([_float(kin.get("vx")), _float(kin.get("vy"))]),
        position=np.array([_float(kin.get("x")), _float(kin.get("y"))]),
        target_id=intention.get("target_id"), trial_id=d.get("trial_id"),
        observed=bool(d.get("observed", False)), events=tuple(d.get("events") or ()),
        scheduled_at=float(d.get("scheduled_at", math.nan)),
        sent_at=float(d.get("sent_at", math.nan)), received_at=received_at, raw=d)


class SequenceCheck:
    """Per stream: counts gaps (missing sequence numbers) and duplicates (already seen)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.gaps = 0                   # sequence numbers never received
        self.duplicates = 0             # not newer than the last one: a repeat (dropped; neither
                                        # ZeroMQ nor WebSocket reorders a stream)
        self.packets = 0

    def admit(self, seq: int) -> int | None:
        """The gap before ``seq``, or None if ``seq`` was already seen (a duplicate)."""
        if self.last is not None and seq <= self.last:
            self.duplicates += 1
            return None
        gap = 0 if self.last is None else seq - self.last - 1
        self.gaps += gap
        self.last = seq
        self.packets += 1
        return gap


def message_item(msg: Any, check: SequenceCheck) -> Metadata | Packet | dict | None:
    """Turn one decoded message into what a stream yields: Metadata, a Packet (duplicates: None),
    or the raw dict for anything else (e.g. a prediction_error reply)."""
    if not isinstance(msg, dict):
        return None
    kind = msg.get("type")
    if kind == "metadata":
        return metadata_from(msg)
    if kind == "data":
        received = time.time()
        gap = check.admit(int(msg["data"]["sequence_number"]))
        if gap is None:
            return None
        packet = packet_from(msg, received)
        return Packet(**{**packet.__dict__, "gap": gap}) if gap else packet
    return msg
