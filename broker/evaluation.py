"""One session's closed-loop evaluation: which bins were published when, every decoder's answers,
their latency, and the report scored against the recording (broker loop thread only).

- ``Publications``: a ring of the session's last RING bins (sequence number -> packet id, send
  time on the broker's monotonic clock, which decoders answered it). A prediction must name a bin
  still in the ring with its packet id, else it is ``unknown_packet``.
- ``DecoderRecord``: per decoder name, its predictions by packet id (the latest answer for a bin
  wins, e.g. after a loop), counters and latency.
- ``Evaluation.accept`` checks and records one prediction; ``report`` scores (broker.scoring).
"""
from __future__ import annotations

import bisect
import math
import time
from array import array
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from broker import scoring
from broker.recording import Recording
from protocol.commands import CommandError, ErrorCode
from protocol.predictions import (DUPLICATE, TOO_MANY_DECODERS, UNKNOWN_PACKET, BadPrediction,
                                  Prediction)

RING = 512                  # bins remembered per session (12.8 s at 40 Hz)
MAX_DECODERS = 16           # decoder names scored per session
LATENCY_RING = 16384        # latencies kept for the percentiles
# Upper bounds (ms) of the latency histogram's buckets; the last bucket is everything above.
HISTOGRAM_MS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


@dataclass(frozen=True)
class EvalSettings:
    """A session's evaluation options, given on create (and kept across restarts)."""

    withhold_labels: bool = False       # stream no kinematics, intention or target
    lockstep: bool = False              # next bin only once the current one was answered
    lockstep_timeout_ms: float = 1000.0

    @classmethod
    def parse(cls, withhold_labels: bool = False, lockstep: bool = False,
              lockstep_timeout_ms: float = 1000.0) -> "EvalSettings":
        if not (math.isfinite(lockstep_timeout_ms) and 1 <= lockstep_timeout_ms <= 60_000):
            raise CommandError(ErrorCode.OUT_OF_RANGE, "lockstep_timeout_ms must be in "
                                                       f"[1, 60000], got {lockstep_timeout_ms}")
        return cls(bool(withhold_labels), bool(lockstep), float(lockstep_timeout_ms))

    @classmethod
    def from_saved(cls, saved: Any) -> "EvalSettings":
        if not isinstance(saved, dict):
            return cls()
        return cls.parse(bool(saved.get("withhold_labels", False)), bool(saved.get("lockstep", False)),
                         float(saved.get("lockstep_timeout_ms", 1000.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"withhold_labels": self.withhold_labels, "lockstep": self.lockstep,
                "lockstep_timeout_ms": self.lockstep_timeout_ms}


class Publications:
    """The session's recently published bins, by sequence number (slot = seq % RING)."""

    __slots__ = ("seq", "packet", "sent", "ordinal", "answered", "count", "last_seq")

    def __init__(self) -> None:
        self.seq = array("q", [-1]) * RING
        self.packet = array("i", [0]) * RING
        self.sent = array("d", [0.0]) * RING
        self.ordinal = array("q", [0]) * RING
        self.answered = array("I", [0]) * RING      # bit i: decoder i answered this bin
        self.count = 0                              # bins published since the last reset
        self.last_seq = -1

    def record(self, seq: int, packet_id: int, sent_mono: float) -> None:
        slot = seq % RING
        self.seq[slot] = seq
        self.packet[slot] = packet_id
        self.sent[slot] = sent_mono
        self.ordinal[slot] = self.count
        self.answered[slot] = 0
        self.count += 1
        self.last_seq = seq

    def slot_of(self, seq: int, packet_id: int) -> int:
        slot = seq % RING
        if self.seq[slot] != seq:
            raise BadPrediction(UNKNOWN_PACKET, f"sequence number {seq} was not sent to this "
                                                f"session, or more than {RING} bins ago")
        if self.packet[slot] != packet_id:
            raise BadPrediction(UNKNOWN_PACKET, f"sequence number {seq} carried packet "
                                                f"{self.packet[slot]}, not {packet_id}")
        return slot

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.seq, self.packet, self.sent, self.ordinal,
                                                  self.answered))


class Latency:
    """Mean, max and histogram over every value; p50/p95/p99 over the last LATENCY_RING (s)."""

    __slots__ = ("count", "total", "maximum", "ring", "index", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self.ring = array("d")
        self.index = 0
        self.buckets = [0] * (len(HISTOGRAM_MS) + 1)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        if len(self.ring) < LATENCY_RING:
            self.ring.append(seconds)
        else:
            self.ring[self.index] = seconds
            self.index = (self.index + 1) % LATENCY_RING
        self.buckets[bisect.bisect_left(HISTOGRAM_MS, seconds * 1000.0)] += 1

    def summary_ms(self) -> dict[str, float | None]:
        if not self.count:
            return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "count": 0}
        p50, p95, p99 = np.percentile(np.frombuffer(self.ring, dtype=np.float64), (50, 95, 99))
        return {"p50": _ms(p50), "p95": _ms(p95), "p99": _ms(p99), "max": _ms(self.maximum),
                "mean": _ms(self.total / self.count), "count": self.count}

    def brief_ms(self) -> dict[str, float | int | None]:
        """Mean, max and count without percentiles (no sort: O(1))."""
        if not self.count:
            return {"mean": None, "max": None, "count": 0}
        return {"mean": _ms(self.total / self.count), "max": _ms(self.maximum), "count": self.count}

    def histogram(self) -> dict[str, list]:
        """Prometheus-style: ``le_ms`` upper bounds (the last is +inf, as null), the count of
        values in each bucket (not cumulative), their sum and count."""
        return {"le_ms": list(HISTOGRAM_MS) + [None], "counts": list(self.buckets),
                "sum_ms": _ms(self.total), "count": self.count}


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000.0, 4)


class DecoderRecord:
    """One decoder's answers in one session."""

    def __init__(self, name: str, index: int, n_bins: int):
        self.name = name
        self.bit = 1 << index
        self.velocity = np.full((n_bins, 2), np.nan)
        self.position: np.ndarray | None = None
        self.target: np.ndarray | None = None      # predicted target_id by packet id, -1: none
        self.predictions = 0
        self.invalid = 0
        self.deadline_misses = 0
        self.first_ordinal: int | None = None
        self.latency = Latency()
        self.client = Latency()              # the client's own view: its sent_at - received_at
        self.hop = Latency()                 # the prediction's trip: arrival - the client's sent_at
        self.decode_s = 0.0                  # sum of server-measured latencies (s)
        self.client_decode_s = 0.0
        self.client_count = 0
        self.data_s = 0.0                    # sum of the predicted bins' durations (s)

    def store(self, p: Prediction, n_bins: int) -> None:
        self.velocity[p.packet_id] = p.velocity
        if p.position is not None:
            if self.position is None:
                self.position = np.full((n_bins, 2), np.nan)
            self.position[p.packet_id] = p.position
        if p.target_id is not None:
            if self.target is None:
                self.target = np.full(n_bins, -1, dtype=np.int64)
            self.target[p.packet_id] = min(p.target_id, 2 ** 31)

    def nbytes(self) -> int:
        own = self.velocity.nbytes + sum(a.nbytes for a in (self.position, self.target)
                                         if a is not None)
        return own + 8 * (len(self.latency.ring) + len(self.client.ring) + len(self.hop.ring))


class Answer(NamedTuple):
    """An accepted prediction, with what its score needs from the bin it answers."""
    record: DecoderRecord
    p: Prediction
    latency: float              # its arrival - the bin's publication (s, monotonic)
    ordinal: int                # the bin's place among those published since the last reset
    missed: bool                # a later bin had been published when it arrived
    now_wall: float             # its arrival (Unix s)


class Evaluation:
    """Every decoder's record in one session and the ring of published bins."""

    def __init__(self, recording: Recording):
        self.recording = recording
        self.published: Publications | None = None     # allocated on the first publication
        self.decoders: dict[str, DecoderRecord] = {}
        self.invalid = 0                      # bad predictions not attributable to a decoder
        self.lockstep_timeouts = 0
        self.since = time.time()

    def record(self, seq: int, packet_id: int, sent_mono: float) -> None:
        """A bin was published."""
        if self.published is None:
            self.published = Publications()
        self.published.record(seq, packet_id, sent_mono)

    def reset(self) -> None:
        """Forget every answer and count afresh (the ring's bins stay answerable)."""
        self.decoders.clear()
        self.invalid = 0
        self.lockstep_timeouts = 0
        pub = self.published
        if pub is not None:
            pub.count = 0
            for i in range(RING):
                pub.answered[i] = 0
                pub.ordinal[i] = -1
        self.since = time.time()

    def accept(self, p: Prediction, now_mono: float, now_wall: float) -> tuple[Answer, bool]:
        """Check one prediction against the published bins and mark its bin answered; the answer
        to score (``score``) and whether it is the first answer to the latest bin (what a
        lock-step session waits for). BadPrediction if it cannot be scored. Everything the score
        depends on is read here, so it may be scored after later bins went out."""
        record = self._decoder(p.decoder)
        pub = self.published
        try:
            if not 0 <= p.packet_id < self.recording.n_bins:
                raise BadPrediction(UNKNOWN_PACKET, f"packet_id {p.packet_id} is not in the recording")
            if pub is None:
                raise BadPrediction(UNKNOWN_PACKET, "no bin was sent to this session yet")
            slot = pub.slot_of(p.sequence_number, p.packet_id)
            if pub.answered[slot] & record.bit:
                raise BadPrediction(DUPLICATE, f"decoder {p.decoder!r} already answered "
                                               f"sequence number {p.sequence_number}")
        except BadPrediction:
            record.invalid += 1
            raise
        first_answer = pub.answered[slot] == 0
        pub.answered[slot] |= record.bit
        latest = p.sequence_number == pub.last_seq
        answer = Answer(record, p, max(0.0, now_mono - pub.sent[slot]), pub.ordinal[slot],
                        not latest, now_wall)
        return answer, first_answer and latest

    def score(self, a: Answer) -> None:
        """Count an accepted answer into its decoder's figures and store what it predicted."""
        record, p = a.record, a.p
        record.predictions += 1
        record.latency.add(a.latency)
        record.decode_s += a.latency
        record.data_s += self.recording.bin_ms / 1000.0
        if a.ordinal >= 0 and (record.first_ordinal is None or a.ordinal < record.first_ordinal):
            record.first_ordinal = a.ordinal
        if a.missed:
            record.deadline_misses += 1
        if p.sent_at is not None and a.now_wall >= p.sent_at:
            record.hop.add(a.now_wall - p.sent_at)
        if p.received_at is not None:
            own = (p.sent_at if p.sent_at is not None else a.now_wall) - p.received_at
            if math.isfinite(own) and own >= 0:
                record.client.add(own)
                record.client_decode_s += own
                record.client_count += 1
        record.store(p, self.recording.n_bins)

    def count_invalid(self, name: Any) -> None:
        """A malformed prediction: counted for the decoder it names, else for the session."""
        if not isinstance(name, str) or not name:
            self.invalid += 1
            return
        try:
            self._decoder(name).invalid += 1
        except BadPrediction:
            pass                            # too many decoders: counted by _decoder

    def _decoder(self, name: str) -> DecoderRecord:
        record = self.decoders.get(name)
        if record is None:
            if len(self.decoders) >= MAX_DECODERS:
                self.invalid += 1
                raise BadPrediction(TOO_MANY_DECODERS, f"a session scores at most {MAX_DECODERS} "
                                                       "decoders (DELETE the evaluation to reset)")
            record = DecoderRecord(name, len(self.decoders), self.recording.n_bins)
            self.decoders[name] = record
        return record

    def missing(self, record: DecoderRecord) -> int:
        """Bins published since the decoder's first answered bin that it has not answered."""
        if record.first_ordinal is None or self.published is None:
            return 0
        return max(0, self.published.count - record.first_ordinal - record.predictions)

    def nbytes(self) -> int:
        ring = self.published.nbytes() if self.published is not None else 0
        return ring + sum(d.nbytes() for d in self.decoders.values())

    # -- results -----------------------------------------------------------------------------
    def report(self, opts: scoring.ScoringOptions, only: str | None = None) -> dict[str, Any]:
        decoders = {name: self.decoder_report(d, opts) for name, d in self.decoders.items()
                    if only is None or name == only}
        return {"since": self.since, "options": opts.to_dict(), "invalid": self.invalid,
                "lockstep_timeouts": self.lockstep_timeouts, "decoders": decoders}

    def decoder_report(self, d: DecoderRecord, opts: scoring.ScoringOptions) -> dict[str, Any]:
        scored = scoring.score(self.recording, d.velocity, d.position, opts, d.target)
        latency = d.latency.summary_ms()
        return {
            "predictions": d.predictions,
            "missing": self.missing(d),
            "invalid": d.invalid,
            "latency_ms": {k: latency[k] for k in ("p50", "p95", "p99", "max", "mean")},
            "deadline_misses": d.deadline_misses,
            "normalized_latency": d.decode_s / d.data_s if d.data_s else None,
            "velocity_r2": scored["velocity_r2"],
            "velocity_corr": scored["velocity_corr"],
            "trials": scored["trials"],
            "position_error_mm": scored["position_error_mm"],
            "target_accuracy": scored["target_accuracy"],
            "bins_scored": scored["bins"],
            "latency_histogram": d.latency.histogram(),
            "client_latency_ms": d.client.summary_ms() if d.client_count else None,
            "hop_ms": d.hop.summary_ms() if d.hop.count else None,
            "client_normalized_latency": (d.client_decode_s / (d.client_count * self.recording.bin_ms
                                                                / 1000.0)
                                          if d.client_count else None),
            "per_trial": scored["per_trial"],
        }

    def metrics(self) -> dict[str, Any]:
        """Counters and latency per decoder, cheap enough for the metrics command (no
        percentiles: the histogram carries the distribution)."""
        return {name: {"predictions": d.predictions, "invalid": d.invalid,
                       "missing": self.missing(d), "deadline_misses": d.deadline_misses,
                       "latency_ms": d.latency.brief_ms(),
                       "latency_histogram": d.latency.histogram()}
                for name, d in self.decoders.items()}
