"""Binning an MC_Maze recording once, for every session to share, and caching the result.

Rules (docs/dataset.md explains them at length):
- Bins lie on the file's own clock, t0 = 0 s (the clock origin, as nlb_tools does), labelled by their
  left edge: bin i covers [i*bin_ms, (i+1)*bin_ms) ms. The recording ends at the later of the last
  trial's stop_time and the last spike; n_bins = ceil(end_ms / bin_ms). The real MC_Maze_Small train
  file (last stop 293.7 s) gives 11,748 bins of 25 ms.
- Spikes are counted the Neural Latents Benchmark way: a spike at t s falls in 1 ms bin
  floor(round(t*1000, 6)); a bin of bin_ms sums whole 1 ms bins.
- A bin belongs to the trial whose [start_time, stop_time) contains its left edge; other bins are
  gaps: observed False, trial_index -1, NaN/-1 for trial-derived values.
- cursor and velocity are the MEAN of the behaviour samples (cursor_pos, hand_vel) whose timestamps
  fall in the bin, looked up by timestamp (samples exist only inside trials); NaN if none.
- The result is cached beside the data file (or in data/cache/ if that directory is not writable),
  keyed by the file's sha256, the bin width and FORMAT_VERSION; written atomically.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from broker.nwb import REQUIRED_BEHAVIOR, DatasetError, NwbSession, read_session, smallest_unsigned
from broker.recording import EVENT_NAMES, Recording, Trial

__all__ = ["DatasetError", "FORMAT_VERSION", "load_recording", "bin_session", "content_key",
           "cache_path", "spike_ms"]

FORMAT_VERSION = 2
FALLBACK_CACHE_DIR = Path(__file__).resolve().parent.parent / "data" / "cache"
log = logging.getLogger(__name__)

# Which trials-table column holds each event's time.
_EVENT_COLUMNS = {"trial_start": "start_time", "target_on": "target_on_time",
                  "go_cue": "go_cue_time", "move_onset": "move_onset_time",
                  "trial_end": "stop_time"}


def load_recording(path: str | Path, bin_ms: int, cache_dir: str | Path | None = None) -> Recording:
    """The binned recording of an MC_Maze NWB file, from the cache when it is fresh."""
    path = Path(path)
    if not isinstance(bin_ms, int) or bin_ms < 1:
        raise ValueError(f"bin_ms must be an integer >= 1, got {bin_ms!r}")
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    key = content_key(path)
    cached = cache_path(path, key, bin_ms, cache_dir)
    recording = _read_cache(cached, path, key, bin_ms)
    if recording is not None:
        log.info("loaded %s from cache %s", path.name, cached)
        return recording
    recording = bin_session(read_session(path, series=REQUIRED_BEHAVIOR), bin_ms, key)
    _write_cache(recording, path, bin_ms, cache_dir)
    return recording


# ---- binning ---------------------------------------------------------------------------------

def spike_ms(times: np.ndarray) -> np.ndarray:
    """The NLB 1 ms bin of each time in s: floor(round(t*1000, 6)), as int64."""
    return np.floor(np.round(np.asarray(times, dtype=np.float64) * 1000.0, 6)).astype(np.int64)


def _ceil_ms(seconds: float) -> int:
    return int(math.ceil(round(seconds * 1000.0, 6)))


def bin_session(session: NwbSession, bin_ms: int, key: str = "") -> Recording:
    """Bin every unit, the behaviour and the trial structure of a session at bin_ms."""
    n_bins = _n_bins(session, bin_ms)
    counts = _bin_counts(session, bin_ms, n_bins)
    trials = _trials(session, bin_ms, n_bins)
    trial_index, trial_time = _trial_bins(trials, bin_ms, n_bins)
    cursor, velocity = _behavior_means(session, bin_ms, n_bins)
    target_id, target_pos = _targets(trials, trial_index, n_bins)
    distance = np.hypot(cursor[:, 0] - target_pos[:, 0], cursor[:, 1] - target_pos[:, 1])
    return Recording(
        name=session.name, path=session.path, content_key=key, bin_ms=bin_ms, t0=0.0,
        unit_ids=session.unit_ids.copy(), heldout=session.heldout.copy(), counts=counts,
        observed=trial_index >= 0, trial_index=trial_index, trial_time_ms=trial_time,
        cursor=cursor, velocity=velocity, target_id=target_id, target_pos=target_pos,
        distance=distance, trials=trials, **_events(session, bin_ms, n_bins),
        has_behavior=session.behavior is not None, velocity_method="bin_mean")


def _n_bins(session: NwbSession, bin_ms: int) -> int:
    end_ms = _ceil_ms(float(np.max(session.trials["stop_time"]))) if session.n_trials else 0
    if session.spike_times.size:
        end_ms = max(end_ms, int(spike_ms(session.spike_times).max()) + 1)
    return max(1, -(-end_ms // bin_ms))


def _bin_counts(session: NwbSession, bin_ms: int, n_bins: int) -> np.ndarray:
    """(n_bins, n_units) spike counts; spikes before t0 are outside the recording and dropped.

    Counted sparsely (unique (bin, unit) pairs) so that 1 ms bins of a long file never need an
    int64 array the size of the whole matrix.
    """
    n_units = session.n_units
    unit_of_spike = np.repeat(np.arange(n_units, dtype=np.int64),
                              np.diff(np.concatenate(([0], session.spike_ends))))
    bins = spike_ms(session.spike_times) // bin_ms
    keep = (bins >= 0) & (bins < n_bins)
    cells, per_cell = np.unique(bins[keep] * n_units + unit_of_spike[keep], return_counts=True)
    counts = np.zeros(n_bins * n_units, dtype=smallest_unsigned(int(per_cell.max(initial=0))))
    counts[cells] = per_cell
    return counts.reshape(n_bins, n_units)


def _behavior_means(session: NwbSession, bin_ms: int, n_bins: int):
    """Bin means of cursor_pos and hand_vel samples, located by their timestamps (NaN if none)."""
    if session.behavior is None:
        nan = np.full((n_bins, 2), np.nan)
        return nan, nan.copy()
    return (_series_mean(session.behavior["cursor_pos"], bin_ms, n_bins),
            _series_mean(session.behavior["hand_vel"], bin_ms, n_bins))


def _series_mean(series, bin_ms: int, n_bins: int) -> np.ndarray:
    bins = spike_ms(series.timestamps) // bin_ms
    keep = (bins >= 0) & (bins < n_bins) & np.isfinite(series.data).all(axis=1)
    bins = bins[keep]
    n = np.bincount(bins, minlength=n_bins)
    out = np.full((n_bins, 2), np.nan)
    has = n > 0
    for axis in range(2):
        total = np.bincount(bins, weights=series.data[keep, axis], minlength=n_bins)
        out[has, axis] = total[has] / n[has]
    return out


def _trials(session: NwbSession, bin_ms: int, n_bins: int) -> tuple[Trial, ...]:
    columns = session.trials
    out = []
    for k in range(session.n_trials):
        start, stop = float(columns["start_time"][k]), float(columns["stop_time"][k])
        first = min(n_bins, -(-_ceil_ms(start) // bin_ms))
        last = min(n_bins, -(-_ceil_ms(stop) // bin_ms))
        out.append(Trial(trial_id=int(session.trial_ids[k]), start_time=start, stop_time=stop,
                         split=session.split[k], first_bin=first, stop_bin=max(first, last),
                         **_trial_fields(session, k)))
    return tuple(out)


def _value(columns: dict[str, np.ndarray], name: str, k: int, kind):
    """One trial's value as a plain Python kind; None when absent or NaN (e.g. a failed trial's
    move onset, or an integer column stored as float with NaN)."""
    if name not in columns:
        return None
    value = columns[name][k]
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return kind(value)


def _trial_fields(session: NwbSession, k: int) -> dict:
    c = session.trials
    fields = {
        "trial_type": _value(c, "trial_type", k, int), "trial_version": _value(c, "trial_version", k, int),
        "num_targets": _value(c, "num_targets", k, int), "num_barriers": _value(c, "num_barriers", k, int),
        "success": _value(c, "success", k, bool), "target_on_time": _value(c, "target_on_time", k, float),
        "go_cue_time": _value(c, "go_cue_time", k, float),
        "move_onset_time": _value(c, "move_onset_time", k, float),
        "delay_ms": _value(c, "delay", k, int), "rt_ms": _value(c, "rt", k, int),
    }
    active = _value(c, "active_target", k, int)
    if active is not None and session.target_pos is not None:
        rows = session.target_pos[k]
        if not 0 <= active < len(rows):
            raise DatasetError(f"{session.path}: trial {int(session.trial_ids[k])} has active_target "
                               f"{active} but {len(rows)} target_pos rows")
        fields.update(target_id=active, target_x=float(rows[active, 0]),
                      target_y=float(rows[active, 1]))
    return fields


def _trial_bins(trials: tuple[Trial, ...], bin_ms: int, n_bins: int):
    trial_index = np.full(n_bins, -1, dtype=np.int32)
    trial_time = np.full(n_bins, np.nan)
    left_ms = np.arange(n_bins, dtype=np.float64) * bin_ms
    for k, trial in enumerate(trials):
        span = slice(trial.first_bin, trial.stop_bin)
        trial_index[span] = k
        trial_time[span] = left_ms[span] - round(trial.start_time * 1000.0, 6)
    return trial_index, trial_time


def _targets(trials: tuple[Trial, ...], trial_index: np.ndarray, n_bins: int):
    ids = np.array([-1 if t.target_id is None else t.target_id for t in trials] + [-1], np.int16)
    xy = np.array([[np.nan, np.nan] if t.target_id is None else [t.target_x, t.target_y]
                   for t in trials] + [[np.nan, np.nan]], dtype=np.float64)
    return ids[trial_index], xy[trial_index]      # index -1 picks the trailing "none" row


def _events(session: NwbSession, bin_ms: int, n_bins: int) -> dict[str, dict]:
    """``events`` (bin -> names in time order) and ``event_offsets_ms`` (bin -> each one's time
    after the bin's left edge, ms, on the same 1 ms-rounded clock as the spikes)."""
    found: list[tuple[float, int, str]] = []
    for order, name in enumerate(EVENT_NAMES):
        column = session.trials.get(_EVENT_COLUMNS[name])
        if column is None:
            continue
        found.extend((float(t), order, name) for t in column.tolist() if not math.isnan(t))
    events: dict[int, list[str]] = {}
    offsets: dict[int, list[float]] = {}
    for t, _, name in sorted(found):
        exact_ms = round(t * 1000.0, 6)
        b = int(spike_ms(np.array([t]))[0]) // bin_ms
        if 0 <= b < n_bins:
            events.setdefault(b, []).append(name)
            offsets.setdefault(b, []).append(round(min(exact_ms - b * bin_ms, bin_ms - 1e-6), 3))
    return {"events": {b: tuple(names) for b, names in events.items()},
            "event_offsets_ms": {b: tuple(offs) for b, offs in offsets.items()}}


# ---- cache -----------------------------------------------------------------------------------

def content_key(path: Path) -> str:
    """sha256 of the file's bytes: any change to the data, however small, invalidates the cache."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_path(path: Path, key: str, bin_ms: int, cache_dir: str | Path | None = None) -> Path:
    """Where the cache of (path, key, bin_ms) lives: cache_dir, beside the file, else data/cache."""
    directory = Path(cache_dir) if cache_dir is not None else path.parent
    if cache_dir is None and not _writable(directory):
        directory = FALLBACK_CACHE_DIR
    return directory / f"{path.stem}.{key[:16]}.{bin_ms}ms.v{FORMAT_VERSION}.phantom.npz"


def _writable(directory: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".phantom-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


_ARRAYS = ("unit_ids", "heldout", "counts", "observed", "trial_index", "trial_time_ms", "cursor",
           "velocity", "target_id", "target_pos", "distance")


def _write_cache(recording: Recording, path: Path, bin_ms: int, cache_dir) -> None:
    """Write atomically (temp file + rename); a failure to cache is logged, never fatal."""
    target = cache_path(path, recording.content_key, bin_ms, cache_dir)
    meta = {"format": FORMAT_VERSION, "content_key": recording.content_key, "bin_ms": bin_ms,
            "name": recording.name, "t0": recording.t0, "has_behavior": recording.has_behavior,
            "velocity_method": recording.velocity_method,
            "trials": [t.__dict__ for t in recording.trials],
            "events": [[b, list(names), list(recording.event_offsets_ms.get(b, ()))]
                       for b, names in sorted(recording.events.items())]}
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)),
                     **{name: getattr(recording, name) for name in _ARRAYS})
        os.chmod(tmp, 0o644)      # mkstemp makes it private; match an ordinary file
        os.replace(tmp, target)
        _remove_superseded(target, path, bin_ms)
    except OSError as exc:
        log.warning("could not write the bin cache %s: %s", target, exc)
        return
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    log.info("binned %s at %d ms and cached it in %s", path.name, bin_ms, target)


def _remove_superseded(target: Path, path: Path, bin_ms: int) -> None:
    """Delete this file's caches for older contents or formats (same stem and bin width)."""
    pattern = f"{glob.escape(path.stem)}.{'[0-9a-f]' * 16}.{bin_ms}ms.v*.phantom.npz"
    for old in target.parent.glob(pattern):
        if old != target:
            old.unlink(missing_ok=True)


def _read_cache(cached: Path, path: Path, key: str, bin_ms: int) -> Recording | None:
    """The cached Recording if the file exists and its stored key matches exactly, else None."""
    if not cached.is_file():
        return None
    try:
        with open(cached, "rb") as f, np.load(f, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if (meta.get("format"), meta.get("content_key"), meta.get("bin_ms")) != (
                    FORMAT_VERSION, key, bin_ms):
                return None
            arrays = {name: npz[name] for name in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable bin cache %s: %s", cached, exc)
        return None
    return Recording(
        name=meta["name"], path=path, content_key=key, bin_ms=bin_ms, t0=meta["t0"],
        trials=tuple(Trial(**t) for t in meta["trials"]),
        events={int(b): tuple(names) for b, names, _ in meta["events"]},
        event_offsets_ms={int(b): tuple(offs) for b, _, offs in meta["events"]},
        has_behavior=meta["has_behavior"], velocity_method=meta["velocity_method"], **arrays)
