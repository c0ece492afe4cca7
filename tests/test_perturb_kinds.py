"""Each neural perturbation's documented effect, measured statistically on the engine's output
against the clean counts it was given (means, variances, correlations, which units, when).

The clean data are Poisson counts at 4 spikes per bin (high enough that clipping at zero plays no
part) so every effect is measurable in a few thousand packets. Expected values come from the
documented meaning of each parameter (docs/perturbations.md), never from the engine's code.
"""
from __future__ import annotations

import numpy as np
import pytest

from broker.perturb.engine import Perturber, UnitStats
from broker.perturb.spec import parse_set
from protocol import CommandError

N_BINS, N_UNITS, BIN_MS, TRIAL_BINS = 4000, 142, 25, 80


@pytest.fixture(scope="module")
def clean():
    return np.random.default_rng(123).poisson(4.0, (N_BINS, N_UNITS)).astype(np.uint8)


def run(clean, items, seed: int = 1, code: str = "kinds", order=None) -> np.ndarray:
    """The perturbed counts of every packet (in ``order`` if given), as an array by packet id."""
    pset = parse_set({"seed": seed, "items": items}, BIN_MS, N_UNITS)
    trial_index = (np.arange(N_BINS) // TRIAL_BINS).astype(np.int32)
    engine = Perturber(code, UnitStats.of(clean, np.ones(N_BINS, bool)), N_BINS, BIN_MS,
                       trial_index, np.ones(N_BINS, bool), [(pset.seed, list(pset.items))])
    out = clean.astype(np.int64).copy()
    for p in (range(N_BINS) if order is None else order):
        counts = engine.counts(p, clean[p])
        if counts is not None:
            out[p] = counts
    return out


def test_noise_has_zero_mean_at_every_count_and_the_documented_sd(clean):
    sigma = 0.2
    noisy = run(clean, [{"kind": "noise", "noise_std": sigma}])
    for level in range(0, 9):
        at = clean == level
        if at.sum() < 2000:
            continue
        values = noisy[at]
        se = values.std() / np.sqrt(values.size)
        assert abs(values.mean() - level) < 4 * se + 1e-9, (level, values.mean())
        if level >= 3:    # far from zero: SD sigma*(count+1), plus at most 1/4 from rounding
            expected = (sigma * (level + 1)) ** 2
            assert expected * 0.9 < values.var() < expected * 1.1 + 0.25, (level, values.var())
    assert np.all(noisy[clean == 0] == 0)          # documented: a zero cannot get zero-mean noise
    assert abs(noisy.mean() / clean.mean() - 1) < 0.005


def test_drift_follows_a_slow_sine_with_zero_mean(clean):
    period_s, amp = 20.0, 0.3
    out = run(clean, [{"kind": "drift", "drift_amplitude": amp, "drift_period_seconds": period_s}])
    t = np.arange(N_BINS) * BIN_MS / 1000.0
    ratio = out.sum(1) / clean.sum(1)
    slope = np.polyfit(np.sin(2 * np.pi * t / period_s), ratio - 1, 1)[0]
    assert abs(slope - amp) < 0.03, slope
    assert abs(out.mean() / clean.mean() - 1) < 0.01     # five whole periods: mean kept


def test_dropout_silences_the_fraction_from_its_start(clean):
    out = run(clean, [{"kind": "dropout", "fraction": 0.2, "start_packet": 1000}])
    assert np.array_equal(out[:1000], clean[:1000])
    silent = np.flatnonzero((out[1000:] == 0).all(axis=0))
    assert len(silent) == round(0.2 * N_UNITS)
    others = np.setdiff1d(np.arange(N_UNITS), silent)
    assert np.array_equal(out[1000:, others], clean[1000:, others])


def test_dropout_by_noise_keeps_the_rate_but_not_the_signal(clean):
    out = run(clean, [{"kind": "dropout", "units": [3, 50, 90], "mode": "noise"}])
    for u in (3, 50, 90):
        assert abs(out[:, u].mean() / clean[:, u].mean() - 1) < 0.05
        assert abs(np.corrcoef(out[:, u], clean[:, u])[0, 1]) < 0.06
    assert np.array_equal(out[:, 4], clean[:, 4])


def test_gain_changes_the_fraction_of_units_by_lognormal_factors(clean):
    out = run(clean, [{"kind": "gain", "preset": "perge2013"}])
    ratio = out.mean(0) / clean.mean(0)
    changed = (out != clean).any(0)
    assert changed.sum() == round(0.74 * N_UNITS)          # exactly the fraction; the rest untouched
    assert 0.15 < np.log(ratio[changed]).std() < 0.27      # log gain SD 0.2


def test_nonstationarity_matches_perge_2013(clean):
    out = run(clean, [{"kind": "nonstationarity", "preset": "perge2013"}])
    change = np.abs(out.mean(0) / clean.mean(0) - 1)
    changed = change > 0.03       # 4 SE of one unit's mean over 4000 bins
    assert 0.72 < changed.mean() < 0.9, changed.mean()           # 84 % of units ...
    assert 0.38 < change[change > 0].mean() < 0.6, change.mean()  # ... by about 49 % of their mean


def test_offset_is_constant_within_a_trial_and_new_each_trial(clean):
    out = run(clean, [{"kind": "offset", "sd": 0.5}])
    diff = (out - clean.astype(np.int64)).reshape(N_BINS // TRIAL_BINS, TRIAL_BINS, N_UNITS)
    first, second = diff[:, :TRIAL_BINS // 2].mean(1), diff[:, TRIAL_BINS // 2:].mean(1)
    assert np.corrcoef(first.ravel(), second.ravel())[0, 1] > 0.8      # one constant per trial
    per_trial = diff.mean(1)
    assert abs(np.corrcoef(per_trial[1:].ravel(), per_trial[:-1].ravel())[0, 1]) < 0.1
    assert abs(per_trial.std() / clean.std() - 0.5) < 0.06              # SD 0.5 unit SDs


def test_tuning_drift_is_a_random_walk(clean):
    out = run(clean, [{"kind": "tuning_drift", "offset_sd": 0.0, "step_sd": 0.05}])
    diff = (out - clean.astype(np.int64)).reshape(100, 40, N_UNITS).mean(1)   # 1 s means
    var10 = np.var(diff[10:] - diff[:-10])
    var40 = np.var(diff[40:] - diff[:-40])
    assert 2.8 < var40 / var10 < 5.5, var40 / var10          # variance grows with the lag
    step_var = (0.05 ** 2) * (1000 / 20) * clean.std() ** 2  # per second, in counts
    assert 0.6 < var10 / (10 * step_var) < 1.5


def test_micro_movement_is_correlated_across_neighbouring_channels(clean):
    moved = run(clean, [{"kind": "micro_movement", "amplitude": 0.3, "length": 10, "shift_fraction": 0.0}])
    log_ratio = np.log(moved.mean(0) / clean.mean(0))
    assert np.corrcoef(log_ratio[1:], log_ratio[:-1])[0, 1] > 0.8
    gains = run(clean, [{"kind": "gain", "fraction": 1.0, "sd": 0.3}])
    log_gain = np.log(gains.mean(0) / clean.mean(0))
    assert abs(np.corrcoef(log_gain[1:], log_gain[:-1])[0, 1]) < 0.3    # unlike independent gains
    shifted = run(clean, [{"kind": "micro_movement", "amplitude": 0.0, "shift_fraction": 0.1}])
    same = [j for j in range(N_UNITS) if np.array_equal(shifted[:, j], clean[:, j])]
    neighbour = [j for j in range(N_UNITS) if j not in same and any(
        0 <= k < N_UNITS and np.array_equal(shifted[:, j], clean[:, k]) for k in (j - 1, j + 1))]
    assert len(neighbour) == round(0.1 * N_UNITS) and len(same) + len(neighbour) == N_UNITS


def test_turnover_loses_units_and_brings_new_tuned_ones(clean):
    out = run(clean, [{"kind": "turnover", "lost": 0.05, "new": 0.05}])
    silent = np.flatnonzero((out == 0).all(0))
    assert len(silent) == round(0.05 * N_UNITS)
    changed = [j for j in range(N_UNITS) if j not in silent and not np.array_equal(out[:, j], clean[:, j])]
    assert len(changed) == round(0.05 * N_UNITS)
    corr = np.corrcoef(out[:, changed].T, clean.T)[:len(changed), len(changed):]
    for row, j in zip(corr, changed):
        assert abs(row[j]) < 0.08                                   # not the old unit ...
        assert np.sort(row)[-2] > 0.5                               # ... but two others' mix


def test_sorting_merges_and_splits_keep_the_spikes(clean):
    out = run(clean, [{"kind": "sorting", "merge": 0.05, "split": 0.05, "split_share": 0.5}])
    assert abs(out.sum() / clean.sum() - 1) < 0.005
    silent = np.flatnonzero((out == 0).all(0))
    assert len(silent) == round(0.05 * N_UNITS)          # merged away
    means, clean_means = out.mean(0), clean.mean(0)
    doubled = np.flatnonzero(means > 1.8 * clean_means)     # merged into: about twice the rate
    halved = np.flatnonzero(np.abs(means / clean_means - 0.5) < 0.05)
    assert len(doubled) == len(silent) and len(halved) == round(0.05 * N_UNITS)


def test_a_ramped_dropout_loses_units_one_after_another(clean):
    out = run(clean, [{"kind": "dropout", "fraction": 0.2, "start_s": 10, "ramp_s": 40, "end_s": 90}])
    silent_per_packet = (out == 0).sum(1) - (clean == 0).sum(1)
    assert np.all(silent_per_packet[:400] == 0) and np.all(silent_per_packet[3600:] == 0)
    ramp = [np.flatnonzero((out[p:p + 40] == 0).all(0)).size for p in range(400, 2000, 40)]
    assert ramp == sorted(ramp) and ramp[0] <= 3 and ramp[-1] >= 26
    assert 8 <= ramp[len(ramp) // 2] <= 20           # about half of the 28 half-way up the ramp


def test_same_seed_same_packets_any_order_other_seed_or_session_differs(clean):
    stack = [{"kind": k, "preset": p} for k, p in (
        ("noise", "moderate"), ("drift", "moderate"), ("dropout", "fifth"), ("gain", "perge2013"),
        ("offset", "willett"), ("tuning_drift", "willett"), ("nonstationarity", "perge2013"),
        ("micro_movement", "perge2013"), ("turnover", "daily"), ("sorting", "typical"))]
    stack[2]["start_packet"] = 500
    a = run(clean, stack)
    order = np.random.default_rng(5).permutation(N_BINS)
    assert np.array_equal(run(clean, stack, order=order), a)      # seeking anywhere: same packets
    assert (run(clean, stack, seed=2) != a).mean() > 0.3
    assert (run(clean, stack, code="other") != a).mean() > 0.3


def test_requests_are_validated():
    for bad, code in (([{"kind": "noise", "noise_std": -1}], "out_of_range"),
                      ([{"kind": "dropout", "units": [0, 0]}], "bad_request"),
                      ([{"kind": "dropout", "units": [N_UNITS]}], "out_of_range"),
                      ([{"kind": "noise", "id": "a"}, {"kind": "gain", "id": "a"}], "bad_request"),
                      ([{"kind": "noise", "preset": "loud"}], "bad_request"),
                      ([{"kind": "freeze", "mode": "melt"}], "bad_request"),
                      ([{"kind": "noise"}] * 33, "out_of_range")):
        with pytest.raises(CommandError) as info:
            parse_set(bad, BIN_MS, N_UNITS)
        assert info.value.code.value == code, bad
