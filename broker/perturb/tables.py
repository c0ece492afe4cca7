"""A segment's tables: the combined effect of every neural perturbation over a run of packets
where no schedule level changes, built once and reused for each packet of the run.

The engine then computes, whatever the number of perturbations, a run of consecutive packets
at a time (clean counts c, recording time t, trial k, draws z ~ N(0,1) and u ~ U(0,1) per
packet and unit), every step an element-wise operation on the whole run:

    r = gain * c * drift(t)               gains; each drift 1 + A_d * wave(t) (one drift: in the gains)
    r += add + offsets(k) + walk(t)       replacements, per-trial offsets, random walks
    with mixing (sorting, movement, turnover) one product per packet: r = [M | add | slope] @ [drift * c, 1, f]
    r = noise(max(r, 0), a*r + b, z)      zero-mean noise (broker.perturb.zeromean)
    counts = floor(r + u)                 stochastic rounding: E[counts] = r

Each element's arithmetic is the same whether a run holds one packet or many (element-wise
operations, and the product made packet by packet), so a packet's counts never depend on which
other packets were computed with it.
"""
from __future__ import annotations

import numpy as np

from broker.perturb.neural import KNOT_PACKETS, wave


class Segment:
    __slots__ = ("ids", "neural", "gain", "mix", "add", "noise_a", "noise_b", "drifts", "offsets",
                 "walks", "n_units", "noise_all", "_trial", "_trial_add", "drift_gain", "drift_period",
                 "may_be_negative", "_knot", "_knot_tables", "_mix_t")

    def __init__(self, n_units: int):
        self.n_units = n_units
        self.ids: tuple[str, ...] = ()
        self.neural = False
        self.gain = np.ones(n_units)
        self.mix: np.ndarray | None = None
        self.add: np.ndarray | None = None
        self.noise_a: np.ndarray | None = None
        self.noise_b: np.ndarray | None = None
        self.drifts: list[tuple[np.ndarray, float]] = []
        self.offsets: list = []
        self.walks: list = []
        self.noise_all = False           # every unit has a positive noise floor b
        self._trial, self._trial_add = None, None
        self.drift_gain: np.ndarray | None = None     # one drift folded into the gains
        self.drift_period = 1.0
        self.may_be_negative = False
        self._knot, self._knot_tables = None, None
        self._mix_t: np.ndarray | None = None        # mix transposed (a view), for the product

    # -- contributions (called by the kinds) ----------------------------------------------------
    def add_noise_scale(self, a: float | np.ndarray, b: float | np.ndarray, units=None) -> None:
        """Noise of scale a*r + b on ``units`` (all by default); scales of several add up."""
        if self.noise_a is None:
            self.noise_a, self.noise_b = np.zeros(self.n_units), np.zeros(self.n_units)
        where = slice(None) if units is None else units
        self.noise_a[where] += a
        self.noise_b[where] += b

    def replace(self, units: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
        """Units whose signal is gone, carrying noise of this mean and SD instead."""
        if self.add is None:
            self.add = np.zeros(self.n_units)
        self.add[units] = mean
        self.add_noise_scale(0.0, sd, units)

    def remix(self, rows: np.ndarray, mixes: list[dict[int, float]]) -> None:
        """Output channel rows[i] becomes sum(w * input[j] for j, w in mixes[i].items())."""
        if len(rows) == 0:
            return
        new_rows = np.zeros((len(rows), self.n_units))
        for i, mix in enumerate(mixes):
            for src, weight in mix.items():
                new_rows[i, src] += weight
        before = np.eye(self.n_units) if self.mix is None else self.mix
        self.mix = before.copy()
        self.mix[rows] = new_rows @ before          # only the changed rows: no n^3 product

    # -- the computation of a run of packets -----------------------------------------------------
    def finish(self) -> None:
        """Fold the gains into the mixing matrix (or one drift into the gains), drop tables that
        do nothing."""
        if self.mix is not None:
            n = self.n_units                # two more columns: the additive terms (see _mixed)
            self.mix = np.hstack((self.gain[:, None] * self.mix, np.zeros((n, 2))))
            self.gain, self._mix_t = None, self.mix.T
        elif np.all(self.gain == 1.0):
            self.gain = None
        if self.mix is None and len(self.drifts) == 1:
            amp, period = self.drifts[0]
            base = np.ones(self.n_units) if self.gain is None else self.gain
            self.gain, self.drift_gain, self.drift_period = base, base * amp, period
            self.drifts = []
        if self.noise_a is not None and not (self.noise_a.any() or self.noise_b.any()):
            self.noise_a = self.noise_b = None
        self.noise_all = self.noise_a is not None and bool(np.all(self.noise_b > 0))
        self.may_be_negative = bool(self.offsets or self.walks)

    def rates(self, counts: np.ndarray, first: int, bin_s: float, trials: np.ndarray) -> np.ndarray:
        """r before clipping and noise for packets first, first + 1, ... (one row of ``counts``
        each, ``trials`` their trial indices): a new float64 array the caller may change in place."""
        if self.mix is not None:
            return self._mixed(counts, first, bin_s, trials)
        if self.drift_gain is not None:
            w = self._waves(first, len(counts), bin_s, self.drift_period)
            factor = np.multiply.outer(w, self.drift_gain)
            factor += self.gain
            r = counts * factor
        elif self.gain is not None:
            r = counts * self.gain
        else:
            r = counts.astype(np.float64)
        for amp, period in self.drifts:
            step = np.multiply.outer(self._waves(first, len(counts), bin_s, period), amp)
            step += 1.0
            r *= step
        if self.walks:
            for lo, hi, trial, knot in self._runs(first, trials):
                base, slope = self._walk_tables(trial, knot)
                r[lo:hi] += base
                into = np.arange(first + lo, first + hi) - knot * KNOT_PACKETS
                r[lo:hi] += np.multiply.outer(into, slope)
        elif self.offsets:
            for lo, hi, trial, _ in self._runs(first, trials):
                r[lo:hi] += self._additive(trial)
        elif self.add is not None:
            r += self.add
        return r

    def _mixed(self, counts: np.ndarray, first: int, bin_s: float, trials: np.ndarray) -> np.ndarray:
        """With mixing, one product per packet does it all: [M | base | slope] @ [drift * c, 1, into],
        the drifts acting on the recorded units' rates before they are mixed onto channels."""
        n, rows = self.n_units, len(counts)
        x = np.empty((rows, n + 2))
        if self.drifts:
            factor = None
            for amp, period in self.drifts:
                step = np.multiply.outer(self._waves(first, rows, bin_s, period), amp)
                step += 1.0
                factor = step if factor is None else factor * step
            np.multiply(counts, factor, out=x[:, :n])
        else:
            x[:, :n] = counts
        x[:, n] = 1.0
        packets = np.arange(first, first + rows)
        x[:, n + 1] = packets % KNOT_PACKETS
        r = np.empty((rows, n))
        runs = self._runs(first, trials) if self.walks or self.offsets else [(0, rows, 0, 0)]
        for lo, hi, trial, knot in runs:
            key = (trial, knot)
            if key != self._knot:
                if self.walks:
                    base, slope = self._walk_tables(trial, knot)
                else:
                    add = self._additive(trial)
                    base, slope = (0.0 if add is None else add), 0.0
                self.mix[:, n], self.mix[:, n + 1] = base, slope
                self._knot = key
            # packet by packet (a stack of vector-matrix products): each packet's sum is made
            # in the same order however many packets the run holds
            if hi - lo == 1:
                np.matmul(self.mix, x[lo], out=r[lo])
            else:
                np.matmul(x[lo:hi, None, :], self._mix_t, out=r[lo:hi, None, :])
        return r

    @staticmethod
    def _waves(first: int, rows: int, bin_s: float, period: float) -> np.ndarray:
        return np.array([wave(p * bin_s, period) for p in range(first, first + rows)])

    def _runs(self, first: int, trials: np.ndarray):
        """(lo, hi, trial, knot) for each stretch of rows with the same trial and, with walks,
        the same walk knot."""
        rows = len(trials)
        if rows == 1:
            return [(0, 1, int(trials[0]), first // KNOT_PACKETS)]
        cuts = (np.flatnonzero(trials[1:] != trials[:-1]) + 1).tolist()
        if self.walks:
            knots = range(-first % KNOT_PACKETS or KNOT_PACKETS, rows, KNOT_PACKETS)
            cuts = sorted(set(cuts).union(knots)) if cuts else list(knots)
        bounds = [0, *cuts, rows]
        return [(lo, hi, int(trials[lo]), (first + lo) // KNOT_PACKETS) for lo, hi in zip(bounds, bounds[1:])]

    def _walk_tables(self, trial: int, knot: int) -> tuple[np.ndarray, np.ndarray]:
        """Additive terms at this knot (cached until the knot or trial changes): the value at
        the knot, and the slope per packet after it."""
        key = (trial, knot)
        if key != self._knot:
            base = np.zeros(self.n_units)
            add = self._additive(trial)
            if add is not None:
                base += add
            slope = np.zeros(self.n_units)
            for kind, level in self.walks:
                value, per_packet = kind.knot(knot)
                base += level * value
                slope += level * per_packet
            self._knot, self._knot_tables = key, (base, slope)
        return self._knot_tables

    def _additive(self, trial: int) -> np.ndarray | None:
        """Replacement means plus this trial's offsets (cached for the current trial)."""
        if not self.offsets:
            return self.add
        if trial != self._trial:
            total = np.zeros(self.n_units) if self.add is None else self.add.copy()
            for kind, scale in self.offsets:
                total += kind.per_trial(trial) * scale
            self._trial, self._trial_add = trial, total
        return self._trial_add
