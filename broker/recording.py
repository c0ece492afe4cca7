"""The binned recording every session replays: the contract between the dataset layer and the broker.

Built once per process by broker.binning.load_recording(path, bin_ms) from an MC_Maze NWB file (real
or synthetic) and shared read-only by all sessions. Bin i covers [t0 + i*bin_ms, t0 + (i+1)*bin_ms)
on the file's own clock and is labelled by its left edge. Values that do not exist for a bin (gaps
between trials, files without behaviour) are NaN in float arrays and -1 in integer id arrays, never
zeros presented as real.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Trial events, in the order they happen within a trial; Recording.events uses these names.
EVENT_NAMES = ("trial_start", "target_on", "go_cue", "move_onset", "trial_end")


@dataclass(frozen=True)
class Trial:
    trial_id: int                   # the trials table's `id`
    start_time: float               # s, file clock
    stop_time: float
    split: str                      # "train", "val" or "test"
    first_bin: int                  # bins [first_bin, stop_bin) belong to this trial
    stop_bin: int
    target_id: int | None = None    # active_target: index into this trial's own targets
    target_x: float | None = None   # mm, position of the active target
    target_y: float | None = None
    trial_type: int | None = None
    trial_version: int | None = None
    num_targets: int | None = None
    num_barriers: int | None = None
    success: bool | None = None
    target_on_time: float | None = None
    go_cue_time: float | None = None
    move_onset_time: float | None = None
    delay_ms: int | None = None
    rt_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack/JSON-ready fields (the trials API's shape)."""
        out = dict(self.__dict__)
        out["condition"] = (None if self.trial_type is None
                            else [self.trial_type, self.trial_version])
        return out


@dataclass(frozen=True, eq=False)
class Recording:
    name: str                       # e.g. "MC_Maze_Small" or "MC_Maze_Small (synthetic)"
    path: Path
    content_key: str                # hash of the file content (the cache key's first part)
    bin_ms: int
    t0: float                       # s, file-clock time of bin 0's left edge
    unit_ids: np.ndarray            # (n_units,) int64; first digit 1 = PMd, 2 = M1
    heldout: np.ndarray             # (n_units,) bool
    counts: np.ndarray              # (n_bins, n_units) unsigned ints, spikes per bin
    observed: np.ndarray            # (n_bins,) bool: inside a trial
    trial_index: np.ndarray         # (n_bins,) int32: index into `trials`, -1 in gaps
    trial_time_ms: np.ndarray       # (n_bins,) float64: bin left edge - trial start, NaN in gaps
    cursor: np.ndarray              # (n_bins, 2) float64 mm, NaN where unknown
    velocity: np.ndarray            # (n_bins, 2) float64 mm/s (hand_vel), NaN where unknown
    target_id: np.ndarray           # (n_bins,) int16 active target id, -1 where none
    target_pos: np.ndarray          # (n_bins, 2) float64 mm, NaN where none
    distance: np.ndarray            # (n_bins,) float64 mm cursor -> target, NaN where unknown
    trials: tuple[Trial, ...]
    events: dict[int, tuple[str, ...]] = field(default_factory=dict)  # bin -> EVENT_NAMES in it
    event_offsets_ms: dict[int, tuple[float, ...]] = field(default_factory=dict)  # parallel to events:
    #                               each event's time - the bin's left edge, ms in [0, bin_ms)
    has_behavior: bool = True       # False for test files (spikes and trial windows only)
    velocity_method: str = "bin_mean"   # how velocity/cursor were reduced to a bin (documented)

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.counts.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_bins * self.bin_ms / 1000.0

    def regions(self) -> list[str]:
        return ["PMd" if str(u).startswith("1") else "M1" for u in self.unit_ids.tolist()]

    def trial_by_id(self, trial_id: int) -> Trial | None:
        for trial in self.trials:
            if trial.trial_id == trial_id:
                return trial
        return None

    def trials_for_target(self, target_id: int) -> list[Trial]:
        return [t for t in self.trials if t.target_id == target_id]
