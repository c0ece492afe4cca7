"""broker.scoring against independent references: sklearn's r2_score (what FALCON calls), numpy's
corrcoef, and reaches worked out by hand on the synthetic recording."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import r2_score

from broker import scoring
from broker.binning import load_recording
from protocol.config import load_config

TRIAL = scoring.ScoringOptions()


@pytest.fixture(scope="module")
def rec():
    return load_recording(load_config({}).resolved_data_path(), 25)


def in_trial_bins(rec) -> np.ndarray:
    """The evaluation mask written out independently: observed bins of a trial with velocity."""
    keep = [k for k in range(rec.n_bins)
            if rec.observed[k] and rec.trial_index[k] >= 0 and not np.isnan(rec.velocity[k]).any()]
    return np.array(keep)


def test_true_velocity_scores_one(rec):
    result = scoring.score(rec, rec.velocity.copy(), rec.cursor.copy(), TRIAL)
    assert result["velocity_r2"] == 1.0
    assert result["velocity_corr"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert result["position_error_mm"] == 0.0
    assert result["bins"] == len(in_trial_bins(rec))
    assert result["trials"]["scored"] == len(rec.trials)
    assert result["trials"]["success_rate"] == 1.0


def test_zeros_match_sklearn_and_are_not_positive(rec):
    zeros = np.zeros_like(rec.velocity)
    bins = in_trial_bins(rec)
    expected = r2_score(rec.velocity[bins], zeros[bins], multioutput="variance_weighted")
    result = scoring.score(rec, zeros, None, TRIAL)
    assert result["velocity_r2"] <= 0
    assert result["velocity_r2"] == pytest.approx(expected, abs=1e-12)
    assert result["velocity_corr"] == [None, None]       # a constant prediction has no r
    assert result["trials"]["success_rate"] == 0.0


def test_noisy_subset_matches_sklearn_overall_and_per_trial(rec):
    rng = np.random.default_rng(7)
    pred = rec.velocity + rng.normal(0, 60, rec.velocity.shape) + 5.0
    pred[rng.random(rec.n_bins) < 0.3] = np.nan          # 30 % of bins never predicted
    bins = np.array([k for k in in_trial_bins(rec) if not np.isnan(pred[k]).any()])
    result = scoring.score(rec, pred, None, TRIAL)
    assert result["bins"] == len(bins)
    assert result["velocity_r2"] == pytest.approx(
        r2_score(rec.velocity[bins], pred[bins], multioutput="variance_weighted"), abs=1e-9)
    for axis in (0, 1):
        r = np.corrcoef(rec.velocity[bins, axis], pred[bins, axis])[0, 1]
        assert result["velocity_corr"][axis] == pytest.approx(r, abs=1e-9)
    rows = {row["trial_id"]: row for row in result["per_trial"]}
    for index in (0, 17, 99):
        trial = rec.trials[index]
        mine = bins[(bins >= trial.first_bin) & (bins < trial.stop_bin)]
        expected = r2_score(rec.velocity[mine], pred[mine], multioutput="variance_weighted")
        assert rows[trial.trial_id]["bins"] == len(mine)
        assert rows[trial.trial_id]["velocity_r2"] == pytest.approx(expected, abs=1e-9)


def test_lag_pairs_each_prediction_with_later_truth(rec):
    lag_bins = 4
    pred = np.full_like(rec.velocity, np.nan)
    pred[:-lag_bins] = rec.velocity[lag_bins:]           # a decoder that sees 100 ms ahead
    opts = scoring.ScoringOptions(lag_ms=lag_bins * rec.bin_ms)
    result = scoring.score(rec, pred, None, opts)
    assert result["velocity_r2"] == pytest.approx(1.0, abs=1e-12)
    # the first lag bins of each trial have no prediction from the same trial
    assert result["bins"] == len(in_trial_bins(rec)) - lag_bins * len(rec.trials)
    assert scoring.score(rec, pred, None, TRIAL)["velocity_r2"] < 0.9


def test_move_window_is_nlb_onset_window(rec):
    mask = scoring.eval_mask(rec, "move")
    trial = rec.trials[5]
    onset_ms = trial.move_onset_time * 1000
    inside = [k for k in range(trial.first_bin, trial.stop_bin) if mask[k]]
    assert len(inside) == 700 // rec.bin_ms
    assert inside[0] * rec.bin_ms >= onset_ms - 250 > (inside[0] - 1) * rec.bin_ms
    assert scoring.score(rec, rec.velocity.copy(), None,
                         scoring.ScoringOptions(window="move"))["bins"] == mask.sum()


def straight_reach(rec, trial, n_bins: int) -> np.ndarray:
    """A prediction that moves the cursor from its move-onset position to the target in n bins."""
    k0 = scoring.onset_bin(rec, trial)
    start = rec.cursor[k0]
    step = (np.array([trial.target_x, trial.target_y]) - start) / (n_bins * rec.bin_ms / 1000)
    vel = np.full_like(rec.velocity, np.nan)
    vel[k0:trial.stop_bin] = 0.0
    vel[k0:k0 + n_bins] = step
    return vel


def test_straight_reach_time_and_efficiency_worked_out_by_hand(rec):
    trial = rec.trials[3]
    n = 10
    opts = scoring.ScoringOptions(radius_mm=10.0, hold_ms=100.0)
    vel = straight_reach(rec, trial, n)
    row = next(r for r in scoring.score(rec, vel, None, opts)["per_trial"]
               if r["trial_id"] == trial.trial_id)
    k0 = scoring.onset_bin(rec, trial)
    distance = math.dist(rec.cursor[k0], (trial.target_x, trial.target_y))
    # after j bins the cursor is distance * (1 - j/n) from the target: inside from the first j
    # with that <= radius, and it stays (the hold of 4 bins fits before the trial ends)
    j = next(j for j in range(1, n + 1) if distance * (1 - j / n) <= 10.0)
    assert row["success"] is True
    assert row["time_to_target_s"] == pytest.approx(j * 0.025)
    assert row["path_efficiency"] == pytest.approx(1.0)


def test_detour_halves_efficiency_and_a_short_trial_fails(rec):
    trial = rec.trials[3]
    k0 = scoring.onset_bin(rec, trial)
    out_and_back = straight_reach(rec, trial, 10)
    out_and_back[k0:k0 + 10] *= -1                       # away from the target first ...
    out_and_back[k0 + 10:k0 + 30] = -out_and_back[k0]    # ... then back through the start to it
    opts = scoring.ScoringOptions(radius_mm=1.0, hold_ms=25.0)
    row = next(r for r in scoring.score(rec, out_and_back, None, opts)["per_trial"]
               if r["trial_id"] == trial.trial_id)
    assert row["success"] is True
    assert row["path_efficiency"] == pytest.approx(1 / 3, rel=0.05)
    hold_too_long = scoring.ScoringOptions(radius_mm=1.0, hold_ms=60_000 / 10)
    row = next(r for r in scoring.score(rec, out_and_back, None, hold_too_long)["per_trial"]
               if r["trial_id"] == trial.trial_id)
    assert row["success"] is False and row["time_to_target_s"] is None


def test_target_accuracy_counts_bins_naming_the_active_target(rec):
    bins = in_trial_bins(rec)
    with_target = [k for k in bins if rec.target_id[k] >= 0]
    guesses = np.full(rec.n_bins, -1)
    guesses[with_target] = rec.target_id[with_target]
    wrong = with_target[::4]                              # every fourth guess names another target
    guesses[wrong] = rec.target_id[wrong] + 1
    result = scoring.score(rec, rec.velocity.copy(), None, TRIAL, guesses)
    assert result["target_accuracy"] == pytest.approx(1 - len(wrong) / len(with_target))
    assert scoring.score(rec, rec.velocity.copy(), None, TRIAL)["target_accuracy"] is None


def test_options_are_checked():
    assert scoring.ScoringOptions(window="nope").check()
    assert scoring.ScoringOptions(lag_ms=-1).check()
    assert scoring.ScoringOptions(radius_mm=0).check()
    assert scoring.ScoringOptions(hold_ms=float("nan")).check()
    assert TRIAL.check() is None
