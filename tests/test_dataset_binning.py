"""Binning: every bin of the synthetic recording against independent computations, and the NLB edge cases."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from broker.binning import bin_session, load_recording
from broker.nwb import read_session
from broker.recording import EVENT_NAMES
from dataset_files import Spec, build
from dataset_files import synthetic_path  # noqa: F401  (session fixture)

TICKS_PER_MS = 30      # the synthetic spike times sit on the 30 kHz acquisition tick


@pytest.fixture(scope="module")
def session(synthetic_path):
    return read_session(synthetic_path)


@pytest.fixture(scope="module")
def raw(synthetic_path):
    """Spike trains straight from HDF5 (not through the reader), as integer 30 kHz ticks."""
    with h5py.File(synthetic_path) as h5:
        times = h5["/units/spike_times"][()]
        ends = h5["/units/spike_times_index"][()].astype(np.int64)
        stamps = h5["/processing/behavior/hand_vel/timestamps"][()]
        behaviour = {name: h5[f"/processing/behavior/{name}/data"][()]
                     for name in ("cursor_pos", "hand_vel")}
    ticks = np.rint(times * 30_000).astype(np.int64)
    assert np.array_equal(ticks / 30_000, times), "synthetic spikes must be tick-aligned"
    return {"ticks": np.split(ticks, ends[:-1]), "stamps_ms": np.rint(stamps * 1000).astype(np.int64),
            **behaviour}


@pytest.mark.parametrize("bin_ms", [1, 5, 25])
def test_counts_equal_a_per_unit_histogram_on_every_bin(session, raw, bin_ms):
    rec = bin_session(session, bin_ms)
    assert rec.n_bins == math.ceil(293_700 / bin_ms)        # pinned like the real small file
    edges = np.arange(0, (rec.n_bins + 1) * bin_ms, bin_ms)  # integer ms edges: no float ties
    for unit, ticks in enumerate(raw["ticks"]):
        expected, _ = np.histogram(ticks // TICKS_PER_MS, bins=edges)
        assert np.array_equal(rec.counts[:, unit], expected), f"unit {unit} at {bin_ms} ms"
    assert int(rec.counts.sum()) == sum(t.size for t in raw["ticks"])
    assert rec.counts.dtype.kind == "u"


def test_25_ms_bins_are_sums_of_whole_1_ms_bins(session):
    fine, coarse = bin_session(session, 1), bin_session(session, 25)
    assert np.array_equal(fine.counts.reshape(-1, 25, fine.n_units).sum(axis=1), coarse.counts)


def test_real_small_file_shape_gives_11748_bins(session):
    rec = bin_session(session, 25)
    assert rec.n_bins == 11_748 and rec.t0 == 0.0 and rec.duration_s == pytest.approx(293.7)


def test_cursor_and_velocity_are_bin_means_of_timestamped_samples(session, raw):
    rec = bin_session(session, 25)
    stamps = raw["stamps_ms"]
    assert rec.velocity_method == "bin_mean"
    for i in range(rec.n_bins):
        lo, hi = np.searchsorted(stamps, [i * 25, (i + 1) * 25])
        if lo == hi:
            assert np.isnan(rec.cursor[i]).all() and np.isnan(rec.velocity[i]).all()
            continue
        np.testing.assert_allclose(rec.cursor[i], raw["cursor_pos"][lo:hi].mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(rec.velocity[i], raw["hand_vel"][lo:hi].mean(axis=0), rtol=1e-9)


def test_trials_gaps_and_per_bin_trial_values(session):
    rec = bin_session(session, 25)
    assert len(rec.trials) == 100
    for k, trial in enumerate(rec.trials):
        assert trial.first_bin == math.ceil(round(trial.start_time * 1000) / 25)
        assert trial.stop_bin == math.ceil(round(trial.stop_time * 1000) / 25)
        span = slice(trial.first_bin, trial.stop_bin)
        assert (rec.trial_index[span] == k).all() and rec.observed[span].all()
        assert rec.trial_time_ms[trial.first_bin] == pytest.approx(
            trial.first_bin * 25 - trial.start_time * 1000, abs=1e-6)
        assert rec.trial_time_ms[span].tolist() == [25.0 * j for j in range(span.stop - span.start)]
        assert (rec.target_id[span] == trial.target_id).all()
        assert (rec.target_pos[span] == [trial.target_x, trial.target_y]).all()
    gaps = ~rec.observed
    assert gaps.sum() > 0, "re-stitched trials leave gaps"
    assert (rec.trial_index[gaps] == -1).all() and (rec.target_id[gaps] == -1).all()
    assert np.isnan(rec.trial_time_ms[gaps]).all() and np.isnan(rec.target_pos[gaps]).all()
    assert np.isnan(rec.cursor[gaps]).all() and np.isnan(rec.distance[gaps]).all()
    inside = rec.observed & np.isfinite(rec.cursor).all(axis=1)
    np.testing.assert_allclose(rec.distance[inside],
                               np.hypot(*(rec.cursor[inside] - rec.target_pos[inside]).T))


def test_events_fall_in_the_bin_of_their_time(session):
    rec = bin_session(session, 25)
    columns = {"trial_start": "start_time", "target_on": "target_on_time", "go_cue": "go_cue_time",
               "move_onset": "move_onset_time", "trial_end": "stop_time"}
    expected: dict[int, list[str]] = {}
    for k in range(session.n_trials):
        for name in EVENT_NAMES:
            t = session.trials[columns[name]][k]
            b = int(np.floor(round(t * 1000, 6))) // 25
            if b < rec.n_bins:
                expected.setdefault(b, []).append(name)
    assert {b: sorted(v) for b, v in rec.events.items()} == {b: sorted(v) for b, v in expected.items()}
    assert rec.events[0][0] == "trial_start"
    assert all(rec.events[t.first_bin][-1] == "trial_start" for t in rec.trials)


def test_nlb_one_ms_rule_on_edge_cases(tmp_path):
    """floor(round(t*1000, 6)): 0.0249999999 s is 25 ms; a spike at the very end extends the span."""
    rec = load_recording(build(tmp_path / "edges.nwb"), 1, cache_dir=tmp_path / "cache")
    assert rec.n_bins == 3001                       # last stop is 3.0 s but a spike rounds to 3000 ms
    assert np.nonzero(rec.counts[:, 0])[0].tolist() == [0, 25, 500, 999]
    assert rec.counts[25, 0] == 3
    assert np.nonzero(rec.counts[:, 2])[0].tolist() == [1100, 1200, 2310, 2999, 3000]
    assert rec.counts[1:200, 3].tolist() == [1] * 199
    assert rec.counts[:, 1].sum() == 0
    coarse = load_recording(tmp_path / "edges.nwb", 25, cache_dir=tmp_path / "cache")
    assert coarse.n_bins == 121 and coarse.counts[1, 0] == 3 and coarse.counts[120, 2] == 1
    assert coarse.observed.sum() == 40 + 36 + 28     # trials of 1000, 900 and 700 ms
    assert not coarse.observed[120]                 # the spike past the last trial is in no trial


@pytest.mark.parametrize("bin_ms", [0, -5, 2.5])
def test_bin_width_must_be_a_positive_integer(tmp_path, bin_ms):
    with pytest.raises(ValueError, match="bin_ms"):
        load_recording(build(tmp_path / "x.nwb"), bin_ms, cache_dir=tmp_path / "cache")


def test_non_grid_trial_starts_use_the_left_edge_rule(tmp_path):
    """A bin belongs to the trial containing its left edge: trial_time_ms is never negative."""
    rec = load_recording(build(tmp_path / "x.nwb", Spec()), 40, cache_dir=tmp_path / "cache")
    # trial 1 starts at 1100 ms: bins of 40 ms have left edges 1080 (gap) and 1120 (trial 1)
    assert rec.trial_index[27] == -1 and rec.trial_index[28] == 1
    assert rec.trial_time_ms[28] == 20.0
    assert np.nanmin(rec.trial_time_ms) >= 0
    assert rec.events[27] == ("trial_start",)       # the start time itself lies in bin 27
