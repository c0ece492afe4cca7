"""The MC_Maze NWB reader: every quirk of the reference, one hand-built file each, and the synthetic file."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from broker.binning import load_recording
from broker.nwb import DatasetError, read_session
from dataset_files import ACTIVE, SPIKES, TARGETS, TRIALS, Spec, behavior_samples, build
from dataset_files import synthetic_path  # noqa: F401  (session fixture)


def _trains(session) -> list[list[float]]:
    return [session.unit_spikes(i).tolist() for i in range(session.n_units)]


def test_well_formed_file_reads_every_column(tmp_path):
    s = read_session(build(tmp_path / "plain.nwb"))
    assert s.unit_ids.tolist() == [1011, 1020, 2031, 2040]
    assert s.heldout.tolist() == [False, True, False, True]
    assert _trains(s) == [sorted(t) for t in SPIKES]
    assert s.trial_ids.tolist() == [0, 1, 2]
    assert s.trials["start_time"].tolist() == [a for a, _ in TRIALS]
    assert [rows.tolist() for rows in s.target_pos] == [np.asarray(t, float).tolist() for t in TARGETS]
    assert s.split == ["train", "val", "train"]
    assert set(s.behavior) == {"cursor_pos", "hand_pos", "eye_pos", "hand_vel"}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_narrow_unsigned_indices_are_cast_before_arithmetic(tmp_path, dtype):
    path = build(tmp_path / "idx.nwb", Spec(index_dtype=dtype))
    with h5py.File(path) as h5:
        assert h5["/units/spike_times_index"].dtype == dtype
    s = read_session(path)
    assert s.spike_ends.dtype == np.int64
    assert _trains(s) == [sorted(t) for t in SPIKES]      # incl. the empty unit and 199 spikes
    assert [len(rows) for rows in s.target_pos] == [1, 1, 3]


@pytest.mark.parametrize("dtype", [np.int16, np.int64])
def test_target_pos_int16_or_int64(tmp_path, dtype):
    path = build(tmp_path / "targets.nwb", Spec(target_dtype=dtype))
    rec = load_recording(path, 25, cache_dir=tmp_path / "cache")
    expected = [TARGETS[k][ACTIVE[k]] for k in range(3)]
    assert [(t.target_id, t.target_x, t.target_y) for t in rec.trials] == [
        (ACTIVE[k], float(x), float(y)) for k, (x, y) in enumerate(expected)]
    assert (rec.trials[2].target_x, rec.trials[2].target_y) == (-118.0, 82.0)   # row 1 of 3
    assert rec.target_id[rec.trial_index == 2].tolist() == [1] * 28


def test_unsorted_spike_times_are_sorted_per_unit(tmp_path):
    path = build(tmp_path / "unsorted.nwb", Spec(unsorted_spikes=True))
    with h5py.File(path) as h5:
        assert np.any(np.diff(h5["/units/spike_times"][:6]) < 0)
    s = read_session(path)
    assert _trains(s) == [sorted(t) for t in SPIKES]
    plain = load_recording(build(tmp_path / "sorted.nwb"), 1, cache_dir=tmp_path / "c1")
    shuffled = load_recording(path, 1, cache_dir=tmp_path / "c2")
    assert np.array_equal(plain.counts, shuffled.counts)


def test_byte_and_str_strings_read_the_same(tmp_path):
    as_bytes = read_session(build(tmp_path / "bytes.nwb", Spec(byte_strings=True)))
    as_str = read_session(build(tmp_path / "str.nwb"))
    with h5py.File(tmp_path / "bytes.nwb") as h5:
        assert isinstance(h5["/intervals/trials/split"][0], bytes)
    assert as_bytes.split == as_str.split == ["train", "val", "train"]


def test_behaviour_with_gaps_is_looked_up_by_timestamp(tmp_path):
    """Bins after a gap get the samples stamped in them, not data[k * rate]."""
    rec = load_recording(build(tmp_path / "gaps.nwb"), 25, cache_dir=tmp_path / "cache")
    stamps, data = behavior_samples()
    # bin 46 = [1150, 1175) ms is inside trial 1, after the 100 ms gap: x is the sample time in ms
    assert rec.cursor[46].tolist() == [1162.0, -2 * 1162.0]
    assert data[46 * 25:47 * 25, 0].mean() != 1162.0          # what k * rate indexing would give
    assert np.isnan(rec.cursor[40:44]).all() and np.isnan(rec.velocity[40:44]).all()  # the gap
    assert not rec.observed[40:44].any() and rec.observed[39] and rec.observed[44]


def test_test_file_layout_has_spikes_and_windows_without_behaviour(tmp_path):
    path = build(tmp_path / "sub-Jenkins_ses-small_desc-test_ecephys.nwb", Spec(test_layout=True))
    rec = load_recording(path, 25, cache_dir=tmp_path / "cache")
    assert rec.name == "MC_Maze_Small (test)"
    assert not rec.has_behavior
    assert np.isnan(rec.cursor).all() and np.isnan(rec.velocity).all() and np.isnan(rec.distance).all()
    assert (rec.target_id == -1).all() and np.isnan(rec.target_pos).all()
    assert not rec.heldout.any()
    assert [t.split for t in rec.trials] == ["test"] * 3
    assert all(t.target_id is None and t.move_onset_time is not None for t in rec.trials)
    names = {name for names in rec.events.values() for name in names}
    assert names == {"trial_start", "move_onset", "trial_end"}
    assert int(rec.counts.sum()) == sum(len(t) for t in SPIKES)


@pytest.mark.parametrize("missing", ["/units", "/units/spike_times_index", "/intervals/trials",
                                     "/intervals/trials/stop_time", "/processing/behavior/hand_vel",
                                     "/intervals/trials/target_pos_index"])
def test_not_mc_maze_shaped_names_the_missing_path(tmp_path, missing):
    path = build(tmp_path / "broken.nwb", Spec(drop=(missing,)))
    with pytest.raises(DatasetError) as error:
        load_recording(path, 25, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "not an MC_Maze NWB file" in message and str(path) in message
    named = message.split("'")[1]
    assert missing.startswith(named) or named.startswith(missing)
    assert "\n" not in message


def test_missing_and_non_hdf5_files_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_recording(tmp_path / "absent.nwb", 25)
    junk = tmp_path / "junk.nwb"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match="cannot open"):
        load_recording(junk, 25, cache_dir=tmp_path / "cache")


def test_names_come_from_the_file(tmp_path, synthetic_path):
    assert read_session(synthetic_path).name == "MC_Maze_Small (synthetic)"
    real_name = tmp_path / "sub-Jenkins_ses-large_desc-train_behavior+ecephys.nwb"
    assert read_session(build(real_name)).name == "MC_Maze_Large"
    assert read_session(build(tmp_path / "other.nwb")).name == "hand-built MC_Maze-shaped test file"


def test_synthetic_file_reads_with_the_train_layout(synthetic_path):
    s = read_session(synthetic_path)
    assert s.n_units == 142 and s.n_trials == 100
    with h5py.File(synthetic_path) as h5:
        assert h5["/units/spike_times_index"].dtype.kind == "u"
        assert h5["/intervals/trials/target_pos"].dtype == np.int64
        total = h5["/units/spike_times"].shape[0]
    assert int(s.spike_ends[-1]) == total
    for i in range(s.n_units):
        assert np.all(np.diff(s.unit_spikes(i)) >= 0)
    for series in s.behavior.values():
        assert series.data.shape == (series.timestamps.size, 2)
        assert np.all(np.diff(series.timestamps) > 0)


def test_failed_trial_with_nan_times_and_float_columns(tmp_path):
    """Real tables can hold NaN (a failed trial has no move onset; rt stored as float)."""
    spec = Spec(columns={"move_onset_time": [0.5, np.nan, 2.8], "rt": [200.0, np.nan, 210.0],
                         "success": [True, False, True]})
    rec = load_recording(build(tmp_path / "failed.nwb", spec), 25, cache_dir=tmp_path / "cache")
    failed = rec.trials[1]
    assert failed.move_onset_time is None and failed.rt_ms is None and failed.success is False
    assert rec.trials[2].rt_ms == 210 and isinstance(rec.trials[2].rt_ms, int)
    onsets = sorted(b for b, names in rec.events.items() if "move_onset" in names)
    assert onsets == [20, 112]
    again = load_recording(tmp_path / "failed.nwb", 25, cache_dir=tmp_path / "cache")
    assert again.trials == rec.trials                      # NaN -> None survives the JSON cache
