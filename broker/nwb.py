"""Reading MC_Maze NWB files with h5py: raw spikes, the trials table and behaviour, every quirk handled.

The schema is the one the DANDI MC_Maze files use (train files of all four variants and the test
files). What this module takes care of, so that nothing downstream has to:
- ragged columns: ``X_index`` holds cumulative END offsets in the smallest unsigned dtype that fits
  (uint8/16/32); they are cast to int64 before any arithmetic (uint8 wraps at 256 otherwise);
- ``target_pos`` may be int16 or int64 (read as float64 mm); strings may come back as bytes or str;
- spike times are not assumed sorted: each unit's slice is sorted;
- behaviour has explicit timestamps with gaps between trials: series are returned with their own
  timestamps and must be looked up by time, never by ``k * rate``;
- test files (no ``/processing``, trials with only start/stop/move_onset/split) read as spikes and
  trial windows without behaviour;
- a file that is not MC_Maze-shaped fails with one ``DatasetError`` naming the missing HDF5 path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

BEHAVIOR_GROUP = "/processing/behavior"
BEHAVIOR_SERIES = ("cursor_pos", "hand_pos", "eye_pos", "hand_vel")
REQUIRED_BEHAVIOR = ("cursor_pos", "hand_vel")

# Scalar trial columns read when present (test files have only a few of them).
SCALAR_TRIAL_COLUMNS = (
    "start_time", "stop_time", "trial_type", "trial_version", "maze_id", "success",
    "target_on_time", "go_cue_time", "move_onset_time", "rt", "delay", "num_targets",
    "num_barriers", "active_target",
)
RAGGED_TRIAL_COLUMNS = ("target_pos", "barrier_pos")

# Variant names by file-name tag and by train-file trial count (reference table).
_VARIANT_BY_TAG = {"full": "MC_Maze", "large": "MC_Maze_Large", "medium": "MC_Maze_Medium",
                   "small": "MC_Maze_Small"}
_VARIANT_BY_TRIALS = {2295: "MC_Maze", 500: "MC_Maze_Large", 250: "MC_Maze_Medium",
                      100: "MC_Maze_Small"}


class DatasetError(Exception):
    """The data file is missing, unreadable or not MC_Maze-shaped; the message names the cause."""


@dataclass(frozen=True)
class Series:
    """One behaviour series: samples (n, 2) at explicit timestamps (n,) on the file clock."""
    timestamps: np.ndarray
    data: np.ndarray


@dataclass(frozen=True, eq=False)
class NwbSession:
    """Everything PhantomLink needs from one MC_Maze file, as plain numpy arrays."""
    path: Path
    name: str
    unit_ids: np.ndarray                 # (n_units,) int64
    heldout: np.ndarray                  # (n_units,) bool
    spike_times: np.ndarray              # flat float64 s, each unit's slice sorted
    spike_ends: np.ndarray               # (n_units,) int64 cumulative end offsets into spike_times
    trial_ids: np.ndarray                # (n_trials,) int64
    trials: dict[str, np.ndarray]        # scalar columns present in the file
    target_pos: list[np.ndarray] | None  # per trial (k, 2) float64 mm
    barrier_pos: list[np.ndarray] | None # per trial (k, 4) float64 mm
    split: list[str]
    behavior: dict[str, Series] | None   # None for test files

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.shape[0])

    @property
    def n_trials(self) -> int:
        return int(self.trial_ids.shape[0])

    def unit_spikes(self, i: int) -> np.ndarray:
        start = 0 if i == 0 else int(self.spike_ends[i - 1])
        return self.spike_times[start:int(self.spike_ends[i])]


def read_session(path: str | Path, series: tuple[str, ...] = BEHAVIOR_SERIES) -> NwbSession:
    """Read one MC_Maze NWB file (train or test layout) into an NwbSession.

    ``series`` limits which behaviour series are loaded (binning needs only cursor_pos and
    hand_vel, which halves peak memory on the full MC_Maze file); the required ones always are.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"cannot open {path} as an NWB/HDF5 file: {exc}") from None
    with h5:
        unit_ids, heldout, spikes, ends = _read_units(h5, path)
        trial_ids, trials, target_pos, barrier_pos, split = _read_trials(h5, path)
        behavior = _read_behavior(h5, path, series) if "processing" in h5 else None
        name = _session_name(h5, path, n_trials=len(trial_ids), is_test=behavior is None)
    return NwbSession(path=path, name=name, unit_ids=unit_ids, heldout=heldout,
                      spike_times=spikes, spike_ends=ends, trial_ids=trial_ids, trials=trials,
                      target_pos=target_pos, barrier_pos=barrier_pos, split=split,
                      behavior=behavior)


def _need(h5: h5py.File, hdf5_path: str, path: Path):
    """The object at hdf5_path, or one DatasetError naming it."""
    if hdf5_path not in h5:
        raise DatasetError(f"not an MC_Maze NWB file: {path} has no HDF5 object '{hdf5_path}'")
    return h5[hdf5_path]


def ragged_ends(h5: h5py.File, index_path: str, path: Path) -> np.ndarray:
    """A VectorIndex as int64 cumulative end offsets (stored as uint8/16/32: cast before maths)."""
    return np.asarray(_need(h5, index_path, path)[()]).astype(np.int64)


def smallest_unsigned(max_value: int) -> type:
    """The smallest unsigned dtype holding max_value (how NWB files store their indices)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def split_ragged(data: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    starts = np.concatenate(([0], ends[:-1]))
    return [data[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def _read_units(h5: h5py.File, path: Path):
    unit_ids = np.asarray(_need(h5, "/units/id", path)[()]).astype(np.int64)
    spikes = np.asarray(_need(h5, "/units/spike_times", path)[()], dtype=np.float64)
    ends = ragged_ends(h5, "/units/spike_times_index", path)
    if ends.shape != unit_ids.shape or (ends.size and ends[-1] != spikes.size):
        raise DatasetError(f"{path}: /units/spike_times_index does not match /units/id and spike_times")
    if "/units/heldout" in h5:
        heldout = np.asarray(h5["/units/heldout"][()]).astype(bool)
    else:
        heldout = np.zeros(unit_ids.shape, dtype=bool)   # test files hold only held-in units
    return unit_ids, heldout, _sort_each_unit(spikes, ends), ends


def _sort_each_unit(spikes: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sort spike times within each unit's slice (the files do not promise sorted times)."""
    out = spikes.copy()
    start = 0
    for end in ends.tolist():
        piece = out[start:end]
        if piece.size > 1 and np.any(np.diff(piece) < 0):
            out[start:end] = np.sort(piece)
        start = end
    return out


def _read_trials(h5: h5py.File, path: Path):
    group = _need(h5, "/intervals/trials", path)
    trial_ids = np.asarray(_need(h5, "/intervals/trials/id", path)[()]).astype(np.int64)
    for required in ("start_time", "stop_time"):
        _need(h5, f"/intervals/trials/{required}", path)
    trials = {name: np.asarray(group[name][()]) for name in SCALAR_TRIAL_COLUMNS if name in group}
    for name in ("start_time", "stop_time", "target_on_time", "go_cue_time", "move_onset_time"):
        if name in trials:
            trials[name] = trials[name].astype(np.float64)
    ragged = {}
    for name in RAGGED_TRIAL_COLUMNS:
        if name in group:
            data = np.asarray(group[name][()]).astype(np.float64)   # int16 or int64 on disk
            ends = ragged_ends(h5, f"/intervals/trials/{name}_index", path)
            ragged[name] = split_ragged(data, ends)
    if "active_target" in trials and "target_pos" not in ragged:
        _need(h5, "/intervals/trials/target_pos", path)
    split = [_text(s) for s in group["split"][()]] if "split" in group else ["train"] * len(trial_ids)
    return trial_ids, trials, ragged.get("target_pos"), ragged.get("barrier_pos"), split


def _read_behavior(h5: h5py.File, path: Path, wanted: tuple[str, ...]) -> dict[str, Series]:
    _need(h5, BEHAVIOR_GROUP, path)
    series = {}
    for name in BEHAVIOR_SERIES:
        base = f"{BEHAVIOR_GROUP}/{name}"
        if name not in REQUIRED_BEHAVIOR and (name not in wanted or base not in h5):
            continue
        data = np.asarray(_need(h5, f"{base}/data", path)[()], dtype=np.float64)
        stamps = np.asarray(_need(h5, f"{base}/timestamps", path)[()], dtype=np.float64)
        if data.ndim != 2 or data.shape[0] != stamps.shape[0]:
            raise DatasetError(f"{path}: {base}/data does not match its timestamps")
        series[name] = Series(timestamps=stamps, data=data[:, :2])
    return series


def _text(value) -> str:
    """h5py returns variable-length strings as bytes unless read with .asstr(): accept both."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _session_name(h5: h5py.File, path: Path, n_trials: int, is_test: bool) -> str:
    """Synthetic files name themselves; real ones are recognised by file name, then trial count."""
    description = _text(h5["session_description"][()]) if "session_description" in h5 else ""
    if "synthetic" in description.lower() and description.startswith("MC_Maze"):
        return description
    tag = re.search(r"ses-(full|large|medium|small)", path.name)
    name = _VARIANT_BY_TAG[tag.group(1)] if tag else _VARIANT_BY_TRIALS.get(n_trials)
    if name is None:
        return description or path.stem
    return f"{name} (test)" if is_test else name
