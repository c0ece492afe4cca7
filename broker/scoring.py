"""Scoring a decoder's predictions against the recording's ground truth: pure numpy, no state.

Everything here takes the binned recording and one decoder's predictions indexed by packet id
(NaN where the decoder sent none) and returns plain, JSON-ready numbers. docs/evaluation.md
explains each metric; the formulas are:

- velocity R²: sklearn's ``r2_score(multioutput="variance_weighted")`` as FALCON scores,
  ``1 - sum_axes(SS_res) / sum_axes(SS_tot)`` with ``SS_tot`` around each axis' own mean;
- Pearson r per axis;
- position error: mean Euclidean distance between sent and true cursor positions;
- pseudo-closed-loop: the predicted velocity integrated from the cursor's position at move onset.

Bins scored (the evaluation mask): observed bins inside trials whose true velocity exists and
that lie in the window (``trial``: the whole trial, FALCON's eval mask; ``move``: NLB's MC_Maze
window, move onset -250 ms to +450 ms), paired with the prediction made ``lag`` bins earlier in
the same trial.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.recording import Recording, Trial

WINDOWS = ("trial", "move")
NLB_WINDOW_MS = (-250.0, 450.0)     # nlb_tools' MC_Maze evaluation window around move onset


@dataclass(frozen=True)
class ScoringOptions:
    window: str = "trial"
    lag_ms: float = 0.0             # behaviour lag: prediction for bin k scored against k + lag
    radius_mm: float = 20.0         # pseudo-closed-loop target radius
    hold_ms: float = 200.0          # time the cursor must stay inside the radius

    def check(self) -> str | None:
        """Why these options cannot be used, or None."""
        if self.window not in WINDOWS:
            return f"window must be one of {', '.join(WINDOWS)}, got {self.window!r}"
        for name in ("lag_ms", "radius_mm", "hold_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or value > 10_000:
                return f"{name} must be in [0, 10000], got {value}"
        if self.radius_mm == 0:
            return "radius_mm must be > 0"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "lag_ms": self.lag_ms, "radius_mm": self.radius_mm,
                "hold_ms": self.hold_ms,
                "window_ms": list(NLB_WINDOW_MS) if self.window == "move" else None}


def onset_bin(rec: Recording, trial: Trial) -> int | None:
    """The bin holding the trial's move onset (None without one)."""
    t = trial.move_onset_time
    if t is None or not math.isfinite(t):
        return None
    k = int(math.floor(round((t - rec.t0) * 1000.0, 6) / rec.bin_ms))
    return k if trial.first_bin <= k < trial.stop_bin else None


@functools.lru_cache(maxsize=8)
def eval_mask(rec: Recording, window: str) -> np.ndarray:
    """Bins whose truth is scored: observed, inside a trial, velocity known, inside the window
    (computed once per recording and window; read-only)."""
    mask = rec.observed & (rec.trial_index >= 0) & np.isfinite(rec.velocity).all(axis=1)
    if window == "trial":
        mask.flags.writeable = False
        return mask
    inside = np.zeros(rec.n_bins, dtype=bool)
    lo, hi = NLB_WINDOW_MS
    for trial in rec.trials:
        k = onset_bin(rec, trial)
        if k is None:
            continue
        onset_ms = (trial.move_onset_time - rec.t0) * 1000.0
        first = max(trial.first_bin, math.ceil((onset_ms + lo) / rec.bin_ms))
        stop = min(trial.stop_bin, math.ceil((onset_ms + hi) / rec.bin_ms))
        inside[first:stop] = True
    mask = mask & inside
    mask.flags.writeable = False
    return mask


def pairs(rec: Recording, predicted: np.ndarray, mask: np.ndarray,
          lag_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction bins, truth bins): truth bin k in the mask, prediction from bin k - lag of the
    same trial, both existing. Both ascending, so each trial's pairs are contiguous."""
    truth = np.flatnonzero(mask)
    truth = truth[truth >= lag_bins]
    pred = truth - lag_bins
    keep = predicted[pred] & (rec.trial_index[pred] == rec.trial_index[truth])
    return pred[keep], truth[keep]


def grouped_accuracy(y_true: np.ndarray, y_pred: np.ndarray, starts: np.ndarray) -> dict[str, list]:
    """Per group of consecutive rows (groups begin at ``starts``): variance-weighted R² and
    Pearson r per axis, from running sums (None where a side has no variance or < 2 rows)."""
    n = np.diff(np.append(starts, len(y_true))).astype(np.float64)[:, None]
    sums = {name: np.add.reduceat(v, starts, axis=0) for name, v in (
        ("t", y_true), ("p", y_pred), ("tt", y_true * y_true), ("pp", y_pred * y_pred),
        ("tp", y_true * y_pred), ("res", (y_true - y_pred) ** 2))}
    var_t = sums["tt"] - sums["t"] ** 2 / n           # n * variance, per axis
    var_p = sums["pp"] - sums["p"] ** 2 / n
    cov = sums["tp"] - sums["t"] * sums["p"] / n
    ss_tot = var_t.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - sums["res"].sum(axis=1) / ss_tot
        r = cov / np.sqrt(var_t * var_p)
    tiny_t = var_t <= 1e-12 * np.maximum(sums["tt"], 1e-300)
    tiny_p = var_p <= 1e-12 * np.maximum(sums["pp"], 1e-300)
    few = n[:, 0] < 2
    return {"velocity_r2": _nullable(r2, few | (ss_tot <= 0) | tiny_t.all(axis=1)),
            "velocity_corr": [list(row) for row in
                              zip(*(_nullable(r[:, a], few | tiny_t[:, a] | tiny_p[:, a])
                                    for a in range(r.shape[1])))]}


def _nullable(values: np.ndarray, invalid: np.ndarray) -> list[float | None]:
    return [None if bad or not math.isfinite(v) else float(v) for v, bad in zip(values, invalid)]


def grouped_position_error(p_true: np.ndarray, p_pred: np.ndarray,
                           starts: np.ndarray) -> list[float | None]:
    """Mean Euclidean distance per group over the rows where both positions exist."""
    ok = np.isfinite(p_true).all(axis=1) & np.isfinite(p_pred).all(axis=1)
    dist = np.where(ok, np.linalg.norm(np.nan_to_num(p_true - p_pred), axis=1), 0.0)
    total, count = np.add.reduceat(dist, starts), np.add.reduceat(ok.astype(np.int64), starts)
    return [float(t / c) if c else None for t, c in zip(total, count)]


def reaches(rec: Recording, vel: np.ndarray, opts: ScoringOptions) -> dict[int, dict[str, Any]]:
    """Pseudo-closed-loop reach of every trial that can be scored, by trial index.

    The cursor starts at the true cursor position of the move-onset bin; each bin's predicted
    velocity (mm/s; a bin without a prediction counts as zero) moves it for one bin width, up to
    the trial's end. Success: it stays within ``radius_mm`` of the trial's target for ``hold_ms``
    (whole bins, at least one) before the trial ends. A trial without a move onset, a target, a
    start position or any prediction after its move onset is not scored.
    """
    seg = _segments(rec, vel)
    if seg is None:
        return {}
    index, k0, stop, start, target = seg
    dt = rec.bin_ms / 1000.0
    steps = np.nan_to_num(vel) * dt
    moved = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])     # moved[k]: sum of bins < k
    lengths = stop - k0
    seg_of = np.repeat(np.arange(len(k0)), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    local = np.arange(len(seg_of)) - offsets[seg_of]
    k = k0[seg_of] + local
    path = start[seg_of] + moved[k + 1] - moved[k0[seg_of]]             # position after bin k
    inside = np.linalg.norm(path - target[seg_of], axis=1) <= opts.radius_mm
    hold = max(1, math.ceil(opts.hold_ms / rec.bin_ms))
    run = np.concatenate([[0], np.cumsum(inside)])
    pos = np.arange(len(inside))
    full = (local >= hold - 1) & (run[pos + 1] - run[np.maximum(pos + 1 - hold, 0)] == hold)
    first_end = np.minimum.reduceat(np.where(full, local, np.iinfo(np.int64).max), offsets)
    travelled = np.concatenate([[0.0], np.cumsum(np.linalg.norm(steps, axis=1))])
    out = {}
    for j, trial_index in enumerate(index):
        out[int(trial_index)] = _reach_row(first_end[j], hold, k0[j], start[j], target[j],
                                           travelled, dt, lengths[j])
    return out


def _segments(rec: Recording, vel: np.ndarray):
    """Trials that can be reached: (trial indices, onset bins, stop bins, starts, targets)."""
    index, k0, stop, start, target = _reachable_trials(rec)
    if not len(index):
        return None
    predicted = np.concatenate([[0], np.cumsum(np.isfinite(vel).all(axis=1))])
    keep = predicted[stop] - predicted[k0] > 0
    if not keep.any():
        return None
    return index[keep], k0[keep], stop[keep], start[keep], target[keep]


@functools.lru_cache(maxsize=4)
def _reachable_trials(rec: Recording):
    """Per recording, once: the trials with a move onset, a target and a start position."""
    rows = []
    for i, trial in enumerate(rec.trials):
        k0 = onset_bin(rec, trial)
        if k0 is None or trial.target_x is None or trial.target_y is None:
            continue
        if np.isfinite(rec.cursor[k0]).all():
            rows.append((i, k0, trial.stop_bin, rec.cursor[k0], (trial.target_x, trial.target_y)))
    if not rows:
        return (np.zeros(0, dtype=np.int64),) * 3 + (np.zeros((0, 2)),) * 2
    index, k0, stop, start, target = zip(*rows)
    return (np.array(index), np.array(k0), np.array(stop), np.array(start, dtype=np.float64),
            np.array(target, dtype=np.float64))


def _reach_row(end, hold, k0, start, target, travelled, dt, length) -> dict[str, Any]:
    if end >= length:
        return {"success": False, "time_to_target_s": None, "path_efficiency": None}
    first = int(end) - hold + 1                 # first bin of the hold, counted from move onset
    path_length = float(travelled[k0 + first + 1] - travelled[k0])
    straight = float(np.linalg.norm(target - start))
    return {"success": True, "time_to_target_s": round((first + 1) * dt, 6),
            "path_efficiency": min(1.0, straight / path_length) if path_length > 0 else 1.0}


_NO_REACH = {"success": None, "time_to_target_s": None, "path_efficiency": None}


def score(rec: Recording, vel: np.ndarray, pos: np.ndarray | None,
          opts: ScoringOptions, targets: np.ndarray | None = None) -> dict[str, Any]:
    """Overall and per-trial accuracy and pseudo-closed-loop figures of one decoder.

    ``vel`` and ``pos`` are (n_bins, 2) predictions by packet id, NaN where none was sent
    (``pos`` None when the decoder never sent positions)."""
    predicted = np.isfinite(vel).all(axis=1)
    lag_bins = int(round(opts.lag_ms / rec.bin_ms))
    pred_idx, truth_idx = pairs(rec, predicted, eval_mask(rec, opts.window), lag_bins)
    overall = _accuracy(rec, vel, pos, pred_idx, truth_idx, np.zeros(1, dtype=np.int64))
    rows = []
    if len(truth_idx):
        trial_of = rec.trial_index[truth_idx]
        firsts, starts = np.unique(trial_of, return_index=True)
        per = _accuracy(rec, vel, pos, pred_idx, truth_idx, starts)
        counts = np.diff(np.append(starts, len(truth_idx)))
        reached = reaches(rec, vel, opts)
        for j, t in enumerate(firsts):
            row = {"trial_id": rec.trials[t].trial_id, "bins": int(counts[j])}
            row.update({key: values[j] for key, values in per.items()})
            row.update(reached.get(int(t), _NO_REACH))
            rows.append(row)
    result = {key: values[0] for key, values in overall.items()} if len(truth_idx) else {
        "velocity_r2": None, "velocity_corr": [None, None], "position_error_mm": None}
    result["bins"] = int(len(truth_idx))
    result["target_accuracy"] = target_accuracy(rec, targets, pred_idx, truth_idx)
    result["trials"] = summarise_reaches(rows)
    result["per_trial"] = rows
    return result


def _accuracy(rec, vel, pos, pred_idx, truth_idx, starts) -> dict[str, list]:
    if not len(truth_idx):
        return {}
    out = grouped_accuracy(rec.velocity[truth_idx], vel[pred_idx], starts)
    out["position_error_mm"] = (grouped_position_error(rec.cursor[truth_idx], pos[pred_idx], starts)
                                if pos is not None else [None] * len(starts))
    return out


def target_accuracy(rec: Recording, targets: np.ndarray | None, pred_idx: np.ndarray,
                    truth_idx: np.ndarray) -> float | None:
    """Fraction of the scored bins with an active target whose predicted ``target_id`` (-1: none
    sent) names it; None if the decoder never sent one for such a bin."""
    if targets is None:
        return None
    truth, guess = rec.target_id[truth_idx], targets[pred_idx]
    sent = (truth >= 0) & (guess >= 0)
    return float(np.mean(guess[sent] == truth[sent])) if sent.any() else None


def summarise_reaches(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's ``trials`` block: reaches scored, success rate, means over successful ones."""
    scored = [r for r in rows if r["success"] is not None]
    wins = [r for r in scored if r["success"]]
    return {
        "scored": len(scored),
        "success_rate": len(wins) / len(scored) if scored else None,
        "mean_time_to_target_s": float(np.mean([r["time_to_target_s"] for r in wins])) if wins else None,
        "path_efficiency": float(np.mean([r["path_efficiency"] for r in wins])) if wins else None,
    }
