"""One session's perturbation engine: which perturbations are active at a packet, the perturbed
counts of that packet, and the session's transport faults.

Everything about a packet is a function of (seed, session code, schedule, packet id): the levels
come from the schedules, the structure of each perturbation from draws keyed by its id, the
per-packet randomness from broker.perturb.draws. The packet axis is cut at every schedule boundary
into segments of constant levels; a segment's combined tables (broker.perturb.tables) are built
the first time one of its packets plays and cached, so a packet costs the same few vector
operations however many perturbations are stacked. When the engine holds the recording's counts
(as in the broker), a packet that is not cached is computed together with the packets after it,
up to PACKET_BLOCK packets (never past its segment), and those wait in a cache for their turn:
each operation then runs over many packets at once instead of paying its fixed cost per packet.
Where these runs start depends on the session code (a phase in 0..PACKET_BLOCK-1), so sessions
playing in step do not all compute ahead in the same tick. The broker itself takes this work a
step at a time before packets are due (``work`` says which step a packet needs: its segment's
tables, its block's draws, a run, or nothing but the look-up; ``make_draws`` and ``compute_run`` of
any length take them; broker.prepare). The numbers are the same either way
(broker.perturb.tables: element-wise arithmetic).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.perturb.draws import PACKET_BLOCK, PacketDraws, hash64
from broker.perturb.neural import NEURAL_KINDS, Context
from broker.perturb.schedule import Schedule
from broker.perturb.spec import Item, PerturbationSet
from broker.perturb.tables import Segment
from broker.perturb.transport import FaultCounts, TransportFaults
from broker.perturb.zeromean import add_noise

MAX_CACHED_SEGMENTS = 8           # a segment with mixing holds a units x units matrix


@dataclass(frozen=True)
class UnitStats:
    """Per-unit count statistics of the recording's observed bins (shared by every session)."""
    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def of(cls, counts: np.ndarray, observed: np.ndarray) -> "UnitStats":
        rows = counts[observed] if observed.any() else counts
        values = rows.astype(np.float64)
        return cls(values.mean(axis=0), values.std(axis=0))


def legacy_items(noise_std: float, drift_amplitude: float, drift_period_s: float,
                 enable_noise: bool, enable_drift: bool) -> list[Item]:
    """The original `noise` settings as engine items (ids `legacy-noise`, `legacy-drift`)."""
    items = []
    if enable_noise and noise_std > 0:
        items.append(Item("legacy-noise", "noise", {"noise_std": noise_std}, Schedule()))
    if enable_drift and drift_amplitude > 0:
        items.append(Item("legacy-drift", "drift", {"drift_amplitude": drift_amplitude,
                                                     "drift_period_seconds": drift_period_s}, Schedule()))
    return items


class Perturber:
    """The perturbations of one session (thread-confined to the broker loop)."""

    def __init__(self, code: str, stats: UnitStats, n_bins: int, bin_ms: int,
                 trial_index: np.ndarray, observed: np.ndarray,
                 sets: list[tuple[int, list[Item]]], clean: np.ndarray | None = None,
                 tally: FaultCounts | None = None):
        """``sets``: (seed, items) pairs, e.g. the legacy noise settings and the perturbation set;
        ``clean``: the recording's counts (bins x units), if the engine may compute ahead;
        ``tally``: where the transport faults count what they do (the session's)."""
        n_units = len(stats.mean)
        self.clean, self.n_bins = clean, n_bins
        self.phase = hash64("ahead:" + code) % PACKET_BLOCK     # where runs computed ahead end
        self.bin_s = bin_ms / 1000.0
        self.trial_index, self.observed = trial_index, observed
        self.n_units = n_units
        self.kinds = []
        transport: list[tuple[int, list[Item]]] = []
        for seed, items in sets:
            ctx = Context(seed, code, n_units, n_bins, bin_ms, stats.mean, stats.sd)
            self.kinds += [NEURAL_KINDS[i.kind](i, ctx) for i in items if i.domain == "neural"]
            transport.append((seed, [i for i in items if i.domain == "transport"]))
        self.items = [item for _, items in sets for item in items]
        seeds = [seed for seed, items in sets if items]
        self.draws = PacketDraws(seeds[0] if seeds else 0, code, "packet:" + ":".join(map(str, seeds)), n_units)
        self.faults = self._faults(transport, code, bin_ms, tally)
        self.bounds = sorted({b for item in self.items for b in item.schedule.boundaries()})
        self._segments: dict[int, Segment] = {}
        self._lo, self._hi, self._seg = 1, 0, None
        self._ahead_lo, self._ahead_hi, self._ahead_seg, self._ahead = 1, 0, None, None

    @staticmethod
    def _faults(transport, code, bin_ms, tally) -> TransportFaults | None:
        faults = [TransportFaults(items, seed, code, bin_ms, tally) for seed, items in transport if items]
        if not faults:
            return None
        if len(faults) == 1:
            return faults[0]
        merged = TransportFaults([], 0, code, bin_ms, faults[0].tally)
        for f in faults:
            merged.faults += f.faults
            merged.clocks += f.clocks
        return merged

    # -- segments ---------------------------------------------------------------------------------
    def segment(self, packet_id: int) -> Segment:
        if self._lo <= packet_id < self._hi:
            return self._seg
        index = bisect.bisect_right(self.bounds, packet_id)
        self._lo = self.bounds[index - 1] if index > 0 else -1
        self._hi = self.bounds[index] if index < len(self.bounds) else 1 << 62
        seg = self._segments.get(index)
        if seg is None:
            if len(self._segments) >= MAX_CACHED_SEGMENTS:
                self._segments.clear()
            seg = self._segments[index] = self._build(packet_id)
        self._seg = seg
        return seg

    def _build(self, packet_id: int) -> Segment:
        seg = Segment(self.n_units)
        seg.ids = tuple(item.id for item in self.items if item.schedule.level(packet_id) > 0)
        for kind in self.kinds:
            level = kind.item.schedule.level(packet_id)
            if level > 0:
                kind.contribute(seg, level)
                seg.neural = True
        seg.finish()
        return seg

    # -- per packet -------------------------------------------------------------------------------
    def active(self, packet_id: int) -> tuple[str, ...]:
        return self.segment(packet_id).ids

    # What counts(packet_id) has to do (``work``), each a step the broker can take on its own
    # before the packet is due (broker.prepare): nothing but a look-up; make the draws of the
    # packet's block; compute a run of packets; build the segment's tables (milliseconds).
    LOOKUP, DRAWS, RUN, BUILD = 0, 1, 2, 3

    def work(self, packet_id: int) -> int:
        """The first thing ``counts(packet_id)`` would have to do (LOOKUP when nothing is left
        but the look-up). Changes nothing."""
        if self._lo <= packet_id < self._hi:
            seg = self._seg
        else:
            seg = self._segments.get(bisect.bisect_right(self.bounds, packet_id))
            if seg is None:
                return self.BUILD
        if not seg.neural or not self.observed[packet_id]:
            return self.LOOKUP
        if self._ahead_lo <= packet_id < self._ahead_hi and self._ahead_seg is seg:
            return self.LOOKUP
        if not self.draws.has(packet_id // PACKET_BLOCK):
            return self.DRAWS
        return self.RUN

    def run_limit(self, packet_id: int) -> int:
        """How many packets from ``packet_id`` ``compute_run`` can compute at once: up to the end
        of the packet's block of draws, its segment and the recording."""
        self.segment(packet_id)
        return min(PACKET_BLOCK - packet_id % PACKET_BLOCK, self._hi - packet_id, self.n_bins - packet_id)

    def make_draws(self, packet_id: int) -> None:
        """The draws of ``packet_id``'s block (kept for counts and compute_run)."""
        self.draws.block(packet_id // PACKET_BLOCK)

    def compute_run(self, packet_id: int, length: int) -> None:
        """Compute packets packet_id .. packet_id + length - 1 (at most ``run_limit``) into the
        cache that ``counts`` reads; the same numbers ``counts`` computes, in a run of this length
        (needs the recording's counts)."""
        seg = self.segment(packet_id)
        stop = packet_id + max(1, min(length, self.run_limit(packet_id)))
        ahead = self._compute(seg, packet_id, stop, self.clean[packet_id:stop])
        ahead.flags.writeable = False
        self._ahead_lo, self._ahead_hi, self._ahead_seg, self._ahead = packet_id, stop, seg, ahead

    def counts(self, packet_id: int, clean: np.ndarray) -> np.ndarray | None:
        """The perturbed counts of a packet (int64 array; read-only when it comes from the cache of
        packets computed ahead), or None when they are the recorded ones (no neural perturbation
        active, or a bin outside the trials, where nothing was measured)."""
        seg = self.segment(packet_id)
        if not seg.neural or not self.observed[packet_id]:
            return None
        if self._ahead_lo <= packet_id < self._ahead_hi and self._ahead_seg is seg:
            return self._ahead[packet_id - self._ahead_lo]
        if self.clean is None:
            return self._compute(seg, packet_id, packet_id + 1, clean[None, :])[0]
        stop = min(packet_id + (self.phase - packet_id - 1) % PACKET_BLOCK + 1, self._hi, self.n_bins)
        ahead = self._compute(seg, packet_id, stop, self.clean[packet_id:stop])
        ahead.flags.writeable = False
        self._ahead_lo, self._ahead_hi, self._ahead_seg, self._ahead = packet_id, stop, seg, ahead
        return ahead[0]

    def _compute(self, seg: Segment, first: int, stop: int, clean: np.ndarray) -> np.ndarray:
        """The counts of packets first..stop-1 (in one segment, at most PACKET_BLOCK), one row each."""
        r = seg.rates(clean, first, self.bin_s, self.trial_index[first:stop])
        z, u = self.draws.rows(first, stop)
        if seg.may_be_negative:
            np.maximum(r, 0.0, out=r)
        if seg.noise_a is not None:
            scale = seg.noise_a * r
            scale += seg.noise_b
            r = add_noise(r, scale, z, seg.noise_all)
        r += u
        return r.astype(np.int64, order="C")    # r >= 0: truncation is floor (stochastic rounding)

    def nbytes(self) -> int:
        walks = sum(k.knots.nbytes for k in self.kinds if hasattr(k, "knots"))
        ahead = 0 if self._ahead is None else self._ahead.nbytes
        return self.draws.nbytes() + walks + ahead + len(self._segments) * 8 * self.n_units * 4


def build(code: str, stats: UnitStats, recording: Any, pset: PerturbationSet | None,
          legacy: list[Item], legacy_seed: int, tally: FaultCounts | None = None) -> Perturber | None:
    """The engine for a session's legacy noise items and perturbation set, or None for neither;
    its transport faults count into ``tally``."""
    sets = []
    if legacy:
        sets.append((legacy_seed, legacy))
    if pset is not None:
        sets.append((pset.seed, list(pset.items)))
    if not sets:
        return None
    return Perturber(code, stats, recording.n_bins, recording.bin_ms, recording.trial_index,
                     recording.observed, sets, clean=recording.counts, tally=tally)
