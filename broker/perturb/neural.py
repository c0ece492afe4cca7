"""The neural perturbation kinds: what each does to a packet's rates, as contributions to a
segment's tables (broker.perturb.tables.Segment).

Every kind draws its structure (which units, which gains, which partners) once, from a generator
keyed by (seed, session, its id), and contributes to a segment at a level in [0, 1] given by its
schedule. "Smooth" effects scale with the level (a gain g becomes 1 + level*(g-1)); "step" effects
hit each chosen unit once the level passes that unit's own threshold (uniform in (0, 1]), so a
ramped dropout loses units one after another. Rates are in counts per bin; `sd` parameters are in
units of each unit's own count SD over the recording (the normalised-feature convention of the
speech-BCI literature).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from broker.perturb.draws import generator
from broker.perturb.spec import Item

KNOT_PACKETS = 40            # the tuning-drift random walk is drawn at knots this far apart
MIN_GAIN = 0.05              # multiplicative factors never reach zero by accident


@dataclass(frozen=True)
class Context:
    """What every kind may use: the keys of its draws and the recording's per-unit statistics."""
    seed: int
    session: str
    n_units: int
    n_bins: int
    bin_ms: int
    mean: np.ndarray          # per unit, counts per bin over the observed bins
    sd: np.ndarray            # per unit, count SD over the observed bins

    def rng(self, item: Item, purpose: str = "structure", index: int = 0) -> np.random.Generator:
        return generator(self.seed, self.session, f"{item.kind}:{item.id}:{purpose}", index)

    def pick(self, item: Item, fraction: float, units: list[int] | None = None) -> np.ndarray:
        """The units an item affects: its explicit list, else a random fraction of them."""
        if units is not None:
            return np.array(units, dtype=np.int64)
        count = int(round(fraction * self.n_units))
        return np.sort(self.rng(item, "units").permutation(self.n_units)[:count])

    def cuts(self, item: Item, count: int) -> np.ndarray:
        """Per-unit thresholds in (0, 1]: a step effect hits a unit once the level reaches it."""
        return 1.0 - self.rng(item, "cuts").random(count)


class Kind:
    """Base: a kind contributes nothing unless it overrides ``contribute``."""

    def __init__(self, item: Item, ctx: Context):
        self.item, self.ctx, self.p = item, ctx, item.params

    def contribute(self, seg, level: float) -> None:
        raise NotImplementedError


class Noise(Kind):
    """Zero-mean noise of SD about noise_std * (rate + 1) (see broker.perturb.zeromean)."""

    def contribute(self, seg, level):
        seg.add_noise_scale(level * self.p["noise_std"], level * self.p["noise_std"])


class Drift(Kind):
    """rate * (1 + A_u * (sin(2 pi t / T) + 0.1 sin(2 pi t / (T/10)))), A_u = amplitude * (1 + o_u).

    t is the packet's time on the recording clock; o_u ~ U(-0.1, 0.1) is the channel's own offset,
    small enough that the factor stays positive at the largest amplitude (1)."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        self.per_channel = 1.0 + ctx.rng(item).uniform(-0.1, 0.1, ctx.n_units)

    def contribute(self, seg, level):
        seg.drifts.append((level * self.p["drift_amplitude"] * self.per_channel, self.p["drift_period_seconds"]))


def wave(t: float, period: float) -> float:
    """The drift's time course: a slow sine and a fast one (a tenth of the period, a tenth as big)."""
    phase = 2.0 * math.pi * t / period
    return math.sin(phase) + 0.1 * math.sin(10.0 * phase)


class Dropout(Kind):
    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        self.units = ctx.pick(item, self.p["fraction"], self.p["units"])
        self.cut = ctx.cuts(item, len(self.units))

    def contribute(self, seg, level):
        hit = self.units[self.cut <= level]
        seg.gain[hit] = 0.0
        if self.p["mode"] == "noise":
            mean = self.ctx.mean[hit]
            seg.replace(hit, mean, np.sqrt(mean))


class Gain(Kind):
    """Per-unit gains exp(sd * z): log-normal with median 1."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        self.units = ctx.pick(item, self.p["fraction"], self.p["units"])
        self.gains = np.exp(self.p["sd"] * ctx.rng(item, "gains").standard_normal(len(self.units)))

    def contribute(self, seg, level):
        seg.gain[self.units] *= 1.0 + level * (self.gains - 1.0)


class Nonstationarity(Kind):
    """A fraction of units change rate by a factor 1 + d, |d| half-normal with mean `magnitude`."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        self.units = ctx.pick(item, self.p["fraction"])
        gen = ctx.rng(item, "changes")
        size = self.p["magnitude"] * math.sqrt(math.pi / 2) * np.abs(gen.standard_normal(len(self.units)))
        sign = np.where(gen.random(len(self.units)) < 0.5, -1.0, 1.0)
        self.factors = np.maximum(MIN_GAIN, 1.0 + sign * size)

    def contribute(self, seg, level):
        seg.gain[self.units] *= 1.0 + level * (self.factors - 1.0)


class Offset(Kind):
    """A constant per-channel offset, sd * unit SD * z, z drawn anew for every trial."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        self._trial, self._z = None, None

    def per_trial(self, trial: int) -> np.ndarray:
        if trial != self._trial:
            self._z = self.ctx.rng(self.item, "trial", trial + 1).standard_normal(self.ctx.n_units)
            self._trial = trial
        return self._z

    def contribute(self, seg, level):
        seg.offsets.append((self, level * self.p["sd"] * self.ctx.sd))


class TuningDrift(Kind):
    """Unit SD * (offset_sd * z_u + random walk of step_sd per 20 ms), the walk drawn at knots
    every KNOT_PACKETS packets and interpolated linearly in between (a function of the packet)."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        n_knots = ctx.n_bins // KNOT_PACKETS + 2
        gen = ctx.rng(item, "walk")
        knot_sd = self.p["step_sd"] * math.sqrt(KNOT_PACKETS * ctx.bin_ms / 20.0)
        steps = gen.standard_normal((n_knots, ctx.n_units)) * knot_sd
        steps[0] = self.p["offset_sd"] * gen.standard_normal(ctx.n_units)
        self.knots = (np.cumsum(steps, axis=0) * ctx.sd).astype(np.float32)   # counts per bin

    def knot(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The walk at knot k and its change per packet until the next knot."""
        k = min(k, len(self.knots) - 2)
        here = self.knots[k].astype(np.float64)
        return here, (self.knots[k + 1] - here) / KNOT_PACKETS

    def contribute(self, seg, level):
        seg.walks.append((self, level))


class MicroMovement(Kind):
    """A gain field smooth along the channel order (a Gaussian-smoothed white noise of correlation
    length `length` channels, SD `amplitude`) and a fraction of channels picking up the unit of a
    neighbouring channel (channel order stands for electrode position)."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        n, gen = ctx.n_units, ctx.rng(item, "field")
        width = self.p["length"]
        x = np.arange(-int(3 * width), int(3 * width) + 1)
        kernel = np.exp(-0.5 * (x / width) ** 2)
        field = np.convolve(gen.standard_normal(n + 2 * len(x)), kernel, mode="same")[len(x):len(x) + n]
        field = (field - field.mean()) / (field.std() or 1.0)
        self.field = np.maximum(MIN_GAIN, 1.0 + self.p["amplitude"] * field) - 1.0
        self.channels = ctx.pick(item, self.p["shift_fraction"])
        direction = np.where(gen.random(len(self.channels)) < 0.5, -1, 1)
        self.sources = np.clip(self.channels + direction, 0, n - 1)
        self.cut = ctx.cuts(item, len(self.channels))

    def contribute(self, seg, level):
        seg.gain *= 1.0 + level * self.field
        hit = self.cut <= level
        seg.remix(self.channels[hit], [{int(s): 1.0} for s in self.sources[hit]])


class Turnover(Kind):
    """`lost` of the channels go silent; on `new` others a new unit replaces the old one, its
    spikes a mix of two other units' (so it is tuned, but unlike any unit the decoder knows)."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        n = ctx.n_units
        order = ctx.rng(item, "units").permutation(n)
        n_lost = int(round(self.p["lost"] * n))
        n_new = min(n - n_lost, int(round(self.p["new"] * n)))
        self.lost, self.new = order[:n_lost], order[n_lost:n_lost + n_new]
        gen = ctx.rng(item, "sources")
        self.sources = [gen.choice(np.delete(np.arange(n), j), 2, replace=False) for j in self.new]
        self.cut_lost, self.cut_new = ctx.cuts(item, n_lost), 1.0 - gen.random(n_new)

    def contribute(self, seg, level):
        seg.gain[self.lost[self.cut_lost <= level]] = 0.0
        hit = np.flatnonzero(self.cut_new <= level)
        seg.remix(self.new[hit], [{int(a): 0.5, int(b): 0.5} for a, b in (self.sources[i] for i in hit)])


class Sorting(Kind):
    """Neighbouring pairs of units: a merge gives one unit both units' spikes and silences the
    other; a split moves `split_share` of one unit's spikes onto its neighbour's channel."""

    def __init__(self, item, ctx):
        super().__init__(item, ctx)
        n = ctx.n_units
        gen = ctx.rng(item, "pairs")
        pairs = gen.permutation(n // 2)
        n_merge = min(len(pairs), int(round(self.p["merge"] * n)))
        n_split = min(len(pairs) - n_merge, int(round(self.p["split"] * n)))
        flip = gen.random(len(pairs)) < 0.5
        a = 2 * pairs + flip                 # the unit that keeps (merge) or gives (split) spikes
        b = 2 * pairs + 1 - flip
        self.merges = list(zip(a[:n_merge], b[:n_merge]))
        self.splits = list(zip(a[n_merge:n_merge + n_split], b[n_merge:n_merge + n_split]))
        self.cut = ctx.cuts(item, n_merge + n_split)

    def contribute(self, seg, level):
        share = self.p["split_share"]
        rows, mixes = [], []
        for k, (a, b) in enumerate(self.merges + self.splits):
            if self.cut[k] > level:
                continue
            if k < len(self.merges):
                rows += [a, b]
                mixes += [{int(a): 1.0, int(b): 1.0}, {}]
            else:
                rows += [a, b]
                mixes += [{int(a): 1.0 - share}, {int(b): 1.0, int(a): share}]
        seg.remix(np.array(rows, dtype=np.int64), mixes)


NEURAL_KINDS: dict[str, type[Kind]] = {
    "noise": Noise, "drift": Drift, "dropout": Dropout, "gain": Gain, "offset": Offset,
    "tuning_drift": TuningDrift, "nonstationarity": Nonstationarity, "micro_movement": MicroMovement,
    "turnover": Turnover, "sorting": Sorting,
}
