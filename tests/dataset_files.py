"""Small hand-built MC_Maze-shaped NWB files for the dataset tests, one quirk switch per argument.

Shared by tests/test_dataset_*.py so that no test module builds HDF5 by hand on its own. The files
carry only what the reader looks at (plain h5py, no pynwb), with content whose binned values are
known in closed form:
- three trials: [0.0, 1.0), [1.1, 2.0), [2.3, 3.0) s (gaps of 100 and 300 ms, as after re-stitching);
- behaviour at 1 kHz inside trials only: x = t in ms, y = -2 * t in ms, so a bin mean is the mean of
  the sample times that fall in the bin (and ``data[k * rate]`` would be visibly wrong after a gap);
- target_pos rows per trial with active_target picking one of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

import pytest

from protocol.config import DEFAULT_SYNTHETIC_PATH, load_config

TRIALS = ((0.0, 1.0), (1.1, 2.0), (2.3, 3.0))
TARGETS = ([[50, 60]], [[-30, 40]], [[10, -20], [-118, 82], [133, -86]])   # trial 2: 3 targets
ACTIVE = (0, 0, 1)
SPIKES = (                                     # per unit, seconds (edge cases of the 1 ms rule)
    [0.0, 0.0249999999, 0.025, 0.0250004, 0.5, 0.999],
    [],
    [1.1, 1.2004, 2.31, 2.999999, 2.9999999999],
    [0.001 * k for k in range(1, 200)],
)


@dataclass
class Spec:
    """What to build; defaults give a well-formed train file."""
    index_dtype: type = np.uint32
    target_dtype: type = np.int64
    byte_strings: bool = False
    unsorted_spikes: bool = False
    test_layout: bool = False
    drop: tuple[str, ...] = ()            # HDF5 paths to leave out
    spikes: tuple = SPIKES
    unit_ids: tuple = (1011, 1020, 2031, 2040)
    heldout: tuple = (False, True, False, True)
    description: str = "hand-built MC_Maze-shaped test file"
    columns: dict = field(default_factory=dict)   # trial columns to store instead (name -> values)


def behavior_samples() -> tuple[np.ndarray, np.ndarray]:
    """1 kHz timestamps inside trials only, and data (x = ms, y = -2 ms)."""
    ms = np.concatenate([np.arange(round(a * 1000), round(b * 1000)) for a, b in TRIALS])
    stamps = ms / 1000.0
    return stamps, np.stack([ms.astype(float), -2.0 * ms], axis=1)


def _strings(values, spec: Spec):
    if spec.byte_strings:
        return np.array([v.encode() for v in values], dtype=h5py.string_dtype("ascii"))
    return np.array(values, dtype=h5py.string_dtype("utf-8"))


def _ragged(group, name: str, rows: list, dtype, spec: Spec) -> None:
    flat = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.zeros(0, dtype)
    group.create_dataset(name, data=flat)
    ends = np.cumsum([len(r) for r in rows])
    group.create_dataset(f"{name}_index", data=ends.astype(spec.index_dtype))


def build(path: Path, spec: Spec | None = None) -> Path:
    """Write the file described by spec at path and return path."""
    spec = spec or Spec()
    with h5py.File(path, "w") as h5:
        h5.create_dataset("session_description", data=spec.description,
                          dtype=h5py.string_dtype("utf-8"))
        _units(h5, spec)
        _trials(h5, spec)
        if not spec.test_layout:
            _behavior(h5)
        for hdf5_path in spec.drop:
            del h5[hdf5_path]
    return path


def _units(h5, spec: Spec) -> None:
    units = h5.create_group("units")
    units.create_dataset("id", data=np.array(spec.unit_ids, dtype=np.int64))
    trains = [list(reversed(s)) if spec.unsorted_spikes else list(s) for s in spec.spikes]
    _ragged(units, "spike_times", trains, np.float64, spec)
    if not spec.test_layout:
        units.create_dataset("heldout", data=np.array(spec.heldout, dtype=bool))
        _ragged(units, "obs_intervals", [list(TRIALS)] * len(trains), np.float64, spec)


def _trials(h5, spec: Spec) -> None:
    trials = h5.create_group("intervals/trials")
    n = len(TRIALS)
    trials.create_dataset("id", data=np.arange(n, dtype=np.int64))
    trials.create_dataset("start_time", data=np.array([a for a, _ in TRIALS]))
    trials.create_dataset("stop_time", data=np.array([b for _, b in TRIALS]))
    trials.create_dataset("move_onset_time", data=np.array([a + 0.5 for a, _ in TRIALS]))
    trials.create_dataset("split", data=_strings(["test"] * n if spec.test_layout
                                                 else ["train", "val", "train"], spec))
    if spec.test_layout:
        return
    trials.create_dataset("target_on_time", data=np.array([a + 0.2 for a, _ in TRIALS]))
    trials.create_dataset("go_cue_time", data=np.array([a + 0.3 for a, _ in TRIALS]))
    trials.create_dataset("trial_type", data=np.array([5, 5, 9], dtype=np.int64))
    trials.create_dataset("trial_version", data=np.array([0, 1, 2], dtype=np.int64))
    trials.create_dataset("num_targets", data=np.array([len(t) for t in TARGETS], dtype=np.int64))
    trials.create_dataset("active_target", data=np.array(ACTIVE, dtype=np.int64))
    trials.create_dataset("success", data=np.ones(n, dtype=bool))
    trials.create_dataset("delay", data=np.array([100, 100, 100], dtype=np.int64))
    trials.create_dataset("rt", data=np.array([200, 200, 200], dtype=np.int64))
    _ragged(trials, "target_pos", [np.array(t) for t in TARGETS], spec.target_dtype, spec)
    for name, values in spec.columns.items():
        if name in trials:
            del trials[name]
        trials.create_dataset(name, data=np.asarray(values))


def _behavior(h5) -> None:
    stamps, data = behavior_samples()
    for name in ("cursor_pos", "hand_pos", "eye_pos", "hand_vel"):
        group = h5.create_group(f"processing/behavior/{name}")
        group.create_dataset("data", data=data)
        group.create_dataset("timestamps", data=stamps)


@pytest.fixture(scope="session")
def synthetic_path() -> Path:
    """The default synthetic recording, generated on first use exactly as `make data` does."""
    from broker.synthetic import ensure_dataset
    return ensure_dataset(load_config(environ={}, data_path=DEFAULT_SYNTHETIC_PATH))
