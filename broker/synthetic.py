"""The synthetic MC_Maze recording: a seeded generator that writes a real NWB file with h5py.

No real dataset can be downloaded here, so the embedded default is generated: MC_Maze's exact
train-file layout (docs/dataset.md and /units, /intervals/trials, /processing/behavior as in the DANDI
files) with MC_Maze_Small's shape (142 units, 100 trials 75 train / 25 val, 27 conditions, 293.7 s)
and motor-cortex-like statistics. It is read back through the same reader as the real files.

    python -m broker.synthetic --ensure                  # the configured dataset exists (make data)
    python -m broker.synthetic --shape medium --seed 7 --out data/synthetic/medium.nwb

Task model (one trial): trial start, target on 400-700 ms later, an instructed delay of 0-1000 ms,
go cue, a reaction time of 250-450 ms, a minimum-jerk (bell-shaped speed) reach to the active target
(curved around barriers in versions 1/2), a hold, trial end. Trials are re-stitched on a 100 ms grid
with short gaps; behaviour (1 kHz) exists only inside trials, with explicit timestamps.

Neuron model (per unit, per 1 ms): rate = softplus of baseline + preparatory tuning to the target
direction during the delay + cosine tuning to hand velocity (leading it by 50-150 ms) + a speed term,
times a per-trial gain; Poisson counts with a 2 ms absolute refractory period; spikes only inside
trials (the obs_intervals), on a 30 kHz tick like the real spike times.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from broker.nwb import DatasetError, smallest_unsigned

log = logging.getLogger(__name__)

DEFAULT_SEED = 20240140   # DANDI:000140 is MC_Maze_Small
# Bumped whenever the model or layout changes, so `--ensure` replaces a default file made by an
# older generator (the bin cache is keyed by content, so it follows on its own).
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class Shape:
    label: str
    n_units: int
    n_trials: int
    n_train: int
    heldout: int
    end_ms: int | None     # pin the last trial's stop here (the real small file spans 293.7 s)


SHAPES = {
    "small": Shape("MC_Maze_Small", 142, 100, 75, 35, 293_700),
    "medium": Shape("MC_Maze_Medium", 152, 250, 188, 38, None),
    "large": Shape("MC_Maze_Large", 162, 500, 375, 40, None),
}

N_MAZES = 9                  # 9 trial types x 3 versions = 27 conditions
GRID_MS = 100                # trial starts are re-stitched onto this grid
SPIKE_TICK_HZ = 30_000       # real spike times sit on the 30 kHz acquisition clock
REFRACTORY_MS = 2.0


# ---- task --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    trial_type: int
    trial_version: int       # 0: one target; 1: one target + barriers; 2: three targets, one reachable
    maze_id: int
    targets: np.ndarray      # (k, 2) int mm
    active: int
    barriers: np.ndarray     # (m, 4) int mm: cx, cy, half_width, half_height


def _mazes(rng: np.random.Generator) -> list[Condition]:
    """27 conditions: for each of 9 mazes (trial_type) the three versions."""
    angles = np.linspace(0, 2 * np.pi, N_MAZES, endpoint=False) + rng.uniform(-0.2, 0.2, N_MAZES)
    radius = rng.uniform(70, 115, N_MAZES)
    main = np.stack([np.clip(radius * np.cos(angles), -118, 133),
                     np.clip(radius * np.sin(angles), -86, 82)], axis=1).round().astype(np.int64)
    trial_types = np.sort(rng.choice(np.arange(1, 120), N_MAZES, replace=False))
    actives = [0, 0, 0, 1, 1, 1, 2, 2, 2]            # where the reachable target sits in version 2
    conditions = []
    for m in range(N_MAZES):
        for version in range(3):
            targets = main[m:m + 1]
            active = 0
            if version == 2:
                others = main[[(m + 3) % N_MAZES, (m + 6) % N_MAZES]]
                targets = np.insert(others, actives[m], main[m], axis=0)
                active = actives[m]
            barriers = _barriers(rng, main[m]) if version else np.zeros((0, 4), np.int64)
            conditions.append(Condition(int(trial_types[m]), version, 1 + 3 * m + version,
                                        targets, active, barriers))
    return conditions


def _barriers(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    n = int(rng.integers(1, 6))
    centres = target[None, :] * rng.uniform(0.3, 0.7, (n, 1)) + rng.normal(0, 15, (n, 2))
    sizes = rng.integers(3, 15, (n, 2))
    return np.concatenate([centres.round(), sizes], axis=1).astype(np.int64)


def _condition_counts(shape: Shape) -> np.ndarray:
    """Trials per condition; for the small shape, active_target counts 0->77, 1->11, 2->12."""
    if shape.n_trials == 100:
        v2 = {0: 3, 1: 3, 2: 4, 3: 3, 4: 4, 5: 4, 6: 4, 7: 4, 8: 4}     # 10 / 11 / 12 trials
        v01 = iter([4] * 13 + [3] * 5)                                   # 67 trials
        return np.array([v2[m] if v == 2 else next(v01) for m in range(N_MAZES) for v in range(3)])
    base, extra = divmod(shape.n_trials, 3 * N_MAZES)
    return np.array([base + (1 if c < extra else 0) for c in range(3 * N_MAZES)])


@dataclass
class TrialPlan:
    condition: Condition
    start_ms: int
    target_on: int            # ms after trial start
    delay: int
    rt: int
    move_ms: int
    hold: int
    split: str

    @property
    def go(self) -> int:
        return self.target_on + self.delay

    @property
    def onset(self) -> int:
        return self.go + self.rt

    @property
    def duration(self) -> int:
        return self.onset + self.move_ms + self.hold


def _plan_trials(rng: np.random.Generator, shape: Shape, conditions: list[Condition]):
    order = np.repeat(np.arange(len(conditions)), _condition_counts(shape))
    rng.shuffle(order)
    splits = np.array(["train"] * shape.n_train + ["val"] * (shape.n_trials - shape.n_train))
    rng.shuffle(splits)
    plans = []
    for k, c in enumerate(order.tolist()):
        cond = conditions[c]
        distance = float(np.hypot(*cond.targets[cond.active]))
        delay = 0 if rng.random() < 0.1 else int(rng.integers(0, 1001))
        plans.append(TrialPlan(cond, 0, int(rng.integers(400, 701)), delay,
                               int(rng.integers(250, 451)), int(300 + 2.5 * distance + rng.integers(0, 80)),
                               int(rng.integers(700, 1300)), str(splits[k])))
    _stitch(plans, shape.end_ms)
    return plans


def _stitch(plans: list[TrialPlan], end_ms: int | None) -> None:
    """Start each trial on the 100 ms grid right after the previous one (gaps of 1-100 ms).

    With end_ms, holds are lengthened or shortened in whole 100 ms steps (which moves every later
    start by exactly one grid step) and the last hold takes the remainder, so the last stop lands
    exactly on end_ms.
    """
    def place():
        t = 0
        for p in plans:
            p.start_ms = t
            t = (p.start_ms + p.duration) // GRID_MS * GRID_MS + GRID_MS
    place()
    if end_ms is None:
        return
    last = plans[-1]
    steps = (end_ms - (last.start_ms + last.duration)) // GRID_MS
    for i in range(abs(steps)):
        plans[i % (len(plans) - 1)].hold += GRID_MS if steps > 0 else -GRID_MS
    place()
    last.hold += end_ms - (last.start_ms + last.duration)
    if min(p.hold for p in plans) < 200:
        raise AssertionError("trial plan cannot reach the pinned end time; change the seed")


# ---- behaviour ---------------------------------------------------------------------------------

def _min_jerk(s: np.ndarray) -> np.ndarray:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def _smooth_noise(rng: np.random.Generator, n: int, scale: float, width: int = 60) -> np.ndarray:
    """Slow 2-D jitter (fixational drift, postural sway): white noise through a Hann window."""
    kernel = np.hanning(width)
    kernel /= np.sqrt(np.sum(kernel**2))
    noise = rng.normal(0, scale, (n + width, 2))
    return np.stack([np.convolve(noise[:, a], kernel, mode="same")[width // 2:width // 2 + n]
                     for a in range(2)], axis=1)


def _trial_behavior(rng: np.random.Generator, p: TrialPlan) -> dict[str, np.ndarray]:
    n = p.duration
    t = np.arange(n, dtype=np.float64)
    start = rng.normal(0, 2.0, 2)
    end = p.condition.targets[p.condition.active].astype(np.float64) + rng.normal(0, 2.5, 2)
    s = np.clip((t - p.onset) / p.move_ms, 0, 1)
    path = start + _min_jerk(s)[:, None] * (end - start)
    if p.condition.trial_version:          # go around the barriers: a bowed path
        normal = np.array([-(end - start)[1], (end - start)[0]]) / max(np.hypot(*(end - start)), 1)
        bow = rng.choice([-1, 1]) * rng.uniform(10, 30)
        path += (np.sin(np.pi * _min_jerk(s)) * bow)[:, None] * normal
    hand = path + _smooth_noise(rng, n, 0.15)
    lag = 15                               # the cursor trails the hand by the display latency
    cursor = np.concatenate([np.repeat(hand[:1], lag, axis=0), hand[:-lag]])
    saccade_at = p.target_on + int(rng.integers(150, 260))
    eye_target = p.condition.targets[p.condition.active].astype(np.float64)
    eye_s = np.clip((t - saccade_at) / 40.0, 0, 1)
    eye = start + _min_jerk(eye_s)[:, None] * (eye_target - start) + _smooth_noise(rng, n, 0.6, 30)
    velocity = np.gradient(hand, axis=0) * 1000.0          # mm/s at 1 kHz
    return {"cursor_pos": cursor, "hand_pos": hand, "eye_pos": eye, "hand_vel": velocity}


# ---- neurons -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Units:
    ids: np.ndarray
    heldout: np.ndarray
    electrodes: np.ndarray      # true electrode rows (0-95 PMd array, 96-191 M1 array)
    baseline: np.ndarray        # Hz
    pd: np.ndarray              # (n, 2) preferred direction unit vectors
    vel_gain: np.ndarray        # Hz per m/s
    speed_gain: np.ndarray      # Hz per m/s
    prep_gain: np.ndarray       # Hz
    prep_pd: np.ndarray         # (n, 2)
    lag_ms: np.ndarray          # neural activity leads the hand by this much


def _units(rng: np.random.Generator, shape: Shape) -> Units:
    n = shape.n_units
    n_pmd = n // 2
    pmd = np.arange(n) < n_pmd
    electrodes = np.where(pmd, rng.integers(0, 96, n), rng.integers(96, 192, n))
    order = np.lexsort((rng.random(n), electrodes))
    electrodes = electrodes[order]
    ids = np.empty(n, np.int64)
    for i, e in enumerate(electrodes.tolist()):
        region = 1 if e < 96 else 2
        sub = int(np.sum(electrodes[:i] == e))
        ids[i] = region * 1000 + (e % 96 + 1) * 10 + sub       # 4 digits: 1xxx PMd, 2xxx M1
    pmd = electrodes < 96
    heldout = np.zeros(n, bool)
    heldout[rng.choice(n, shape.heldout, replace=False)] = True
    angle = rng.uniform(0, 2 * np.pi, n)
    prep_angle = angle + rng.normal(0, 0.8, n)
    return Units(
        ids=ids, heldout=heldout, electrodes=electrodes,
        baseline=rng.lognormal(np.log(2.0), 0.6, n),
        pd=np.stack([np.cos(angle), np.sin(angle)], axis=1),
        vel_gain=rng.lognormal(np.log(18.0), 0.5, n) * np.where(pmd, 0.7, 1.0),
        speed_gain=rng.lognormal(np.log(14.0), 0.5, n),
        prep_gain=rng.lognormal(np.log(2.0), 0.5, n) * np.where(pmd, 1.5, 0.7),
        prep_pd=np.stack([np.cos(prep_angle), np.sin(prep_angle)], axis=1),
        lag_ms=rng.integers(50, 151, n))


def _rates(units: Units, p: TrialPlan, velocity: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(n_ms, n_units) firing rate in Hz for one trial."""
    n = velocity.shape[0]
    lead = int(units.lag_ms.max())
    v = np.concatenate([velocity, np.repeat(velocity[-1:], lead, axis=0)]) / 1000.0   # m/s
    drive = v @ (units.pd * units.vel_gain[:, None]).T
    drive += np.hypot(v[:, 0], v[:, 1])[:, None] * units.speed_gain
    # each unit sees the velocity lag_ms ahead: the cortex leads the hand
    drive = np.take_along_axis(drive, np.arange(n)[:, None] + units.lag_ms[None, :], axis=0)
    target = p.condition.targets[p.condition.active].astype(np.float64)
    direction = target / max(np.hypot(*target), 1.0)
    drive[p.target_on + 100:p.onset + 100] += units.prep_gain * (units.prep_pd @ direction)
    return gain * np.maximum(units.baseline + drive, 0.0)


def _spikes(rng: np.random.Generator, rates: np.ndarray, start_ms: int):
    """Poisson spikes of one trial as (unit, time in ms) pairs, unsorted."""
    counts = rng.poisson(rates / 1000.0)
    ms, unit = np.nonzero(counts)
    repeat = counts[ms, unit]
    ms, unit = np.repeat(ms, repeat), np.repeat(unit, repeat)
    return unit, start_ms + ms + rng.random(ms.size)


def _spike_trains(units: np.ndarray, times_ms: np.ndarray, n_units: int) -> list[np.ndarray]:
    """Per-unit sorted spike times in s on the 30 kHz tick, with an absolute refractory period."""
    order = np.lexsort((times_ms, units))
    units, times_ms = units[order], times_ms[order]
    keep = np.ones(units.size, bool)
    keep[1:] = (units[1:] != units[:-1]) | (np.diff(times_ms) >= REFRACTORY_MS)
    units, times = units[keep], np.round(times_ms[keep] / 1000.0 * SPIKE_TICK_HZ) / SPIKE_TICK_HZ
    ends = np.cumsum(np.bincount(units, minlength=n_units))
    return np.split(times, ends[:-1])


# ---- generation --------------------------------------------------------------------------------

@dataclass
class Generated:
    shape: Shape
    plans: list[TrialPlan]
    units: Units
    spikes: list[np.ndarray]                  # per unit, sorted s
    behavior: dict[str, tuple[np.ndarray, np.ndarray]]   # name -> (timestamps, data)


def generate(shape: str = "small", seed: int = DEFAULT_SEED) -> Generated:
    """The whole synthetic session in memory (deterministic for a given shape and seed)."""
    spec = SHAPES[shape]
    rng = np.random.default_rng(seed)
    conditions = _mazes(rng)
    plans = _plan_trials(rng, spec, conditions)
    units = _units(rng, spec)
    spike_units, spike_ms = [], []
    series: dict[str, list[np.ndarray]] = {}
    stamps = []
    for p in plans:
        behavior = _trial_behavior(rng, p)
        for name, data in behavior.items():
            series.setdefault(name, []).append(data)
        stamps.append((p.start_ms + np.arange(p.duration)) / 1000.0)
        gain = rng.lognormal(0, 0.15, spec.n_units)
        unit, ms = _spikes(rng, _rates(units, p, behavior["hand_vel"], gain), p.start_ms)
        spike_units.append(unit)
        spike_ms.append(ms)
    timestamps = np.concatenate(stamps)
    trains = _spike_trains(np.concatenate(spike_units), np.concatenate(spike_ms), spec.n_units)
    return Generated(spec, plans, units, trains,
                     {name: (timestamps, np.concatenate(parts)) for name, parts in series.items()})


def identifier(label: str, seed: int) -> str:
    return f"phantomlink-synthetic-{label}-seed{seed}-gen{GENERATOR_VERSION}"


def write_nwb(gen: Generated, out: Path, seed: int) -> None:
    """Write atomically: a half-written file never sits at the final path (a unique temp name, so
    two processes generating at once each write their own and the last rename wins)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with h5py.File(tmp, "w") as h5:
            _write_root(h5, gen, seed)
            electrodes = _write_electrodes(h5, gen.units)
            _write_trials(h5, gen.plans)
            _write_units(h5, gen, electrodes)
            _write_behavior(h5, gen.behavior)
        tmp.chmod(0o644)          # mkstemp makes it private; the data file is not a secret
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def generate_file(out: str | Path, shape: str = "small", seed: int = DEFAULT_SEED) -> Path:
    out = Path(out)
    write_nwb(generate(shape, seed), out, seed)
    return out


# ---- NWB layout (h5py) -------------------------------------------------------------------------

STR = h5py.string_dtype("utf-8")


def _typed(obj, neurodata_type: str, namespace: str = "core", **attrs) -> None:
    obj.attrs["neurodata_type"] = neurodata_type
    obj.attrs["namespace"] = namespace
    for key, value in attrs.items():
        obj.attrs[key] = value


def _string(h5, name: str, value) -> None:
    h5.create_dataset(name, data=value, dtype=STR)


def _write_root(h5: h5py.File, gen: Generated, seed: int) -> None:
    _typed(h5, "NWBFile", nwb_version="2.5.0")
    now = datetime(2024, 1, 1, tzinfo=timezone.utc).isoformat()
    start = datetime(2009, 9, 18, tzinfo=timezone.utc).isoformat()   # Jenkins, MC_Maze era
    _string(h5, "file_create_date", [now])
    _string(h5, "identifier", identifier(gen.shape.label, seed))
    _string(h5, "session_description", f"{gen.shape.label} (synthetic)")
    _string(h5, "session_start_time", start)
    _string(h5, "timestamps_reference_time", start)
    h5.attrs["object_id"] = _object_id(h5, "/")
    for group in ("acquisition", "analysis", "stimulus/presentation", "stimulus/templates",
                  "general/devices", "general/extracellular_ephys", "intervals", "processing"):
        h5.require_group(group)
    general = h5["general"]
    _string(general, "experiment_description",
            f"Synthetic delayed center-out maze reaching shaped like {gen.shape.label} "
            f"(DANDI MC_Maze layout), generated by PhantomLink with seed {seed}.")
    _string(general, "lab", "PhantomLink (synthetic)")


def _object_id(h5, path: str) -> str:
    """A deterministic UUID-shaped object_id per typed object (pynwb reads one for each)."""
    token = h5.file["identifier"][()].decode()   # written first: shape and seed, not the file path
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{token}:{path}"))


def _table(group, description: str, colnames: list[str], ids: np.ndarray,
           neurodata_type: str = "DynamicTable", namespace: str = "hdmf-common") -> None:
    _typed(group, neurodata_type, namespace, description=description, colnames=colnames)
    group.attrs["object_id"] = _object_id(group.file, group.name)
    dataset = group.create_dataset("id", data=ids.astype(np.int64))
    _typed(dataset, "ElementIdentifiers", "hdmf-common")
    dataset.attrs["object_id"] = _object_id(group.file, dataset.name)


def _column(group, name: str, data, description: str, dtype=None) -> h5py.Dataset:
    dataset = group.create_dataset(name, data=data, dtype=dtype)
    _typed(dataset, "VectorData", "hdmf-common", description=description)
    dataset.attrs["object_id"] = _object_id(group.file, dataset.name)
    return dataset


def _ragged(group, name: str, rows: list[np.ndarray], description: str, dtype) -> None:
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype)
    data = _column(group, name, flat.astype(dtype), description)
    ends = np.cumsum([len(r) for r in rows]).astype(np.int64)
    index = group.create_dataset(f"{name}_index", data=ends.astype(smallest_unsigned(int(ends[-1]))))
    _typed(index, "VectorIndex", "hdmf-common", target=data.ref,
           description=f"index into the {name} column")
    index.attrs["object_id"] = _object_id(group.file, index.name)


def _write_electrodes(h5: h5py.File, units: Units) -> h5py.Group:
    device = h5.create_group("general/devices/Utah Array")
    _typed(device, "Device", description="96-channel Utah array (synthetic)")
    device.attrs["object_id"] = _object_id(h5, device.name)
    ephys = h5["general/extracellular_ephys"]
    groups = []
    for name, location in (("PMd array", "PMd"), ("M1 array", "M1")):
        g = ephys.create_group(name)
        _typed(g, "ElectrodeGroup", description=f"Utah array in {location}", location=location)
        g.attrs["object_id"] = _object_id(h5, g.name)
        g["device"] = h5py.SoftLink(device.name)
        groups.append(g)
    table = ephys.create_group("electrodes")
    _table(table, "metadata about extracellular electrodes",
           ["location", "group", "group_name"], np.arange(192))
    region = ["PMd"] * 96 + ["M1"] * 96
    _column(table, "location", region, "brain area of the electrode", STR)
    _column(table, "group", [groups[0 if i < 96 else 1].ref for i in range(192)],
            "the ElectrodeGroup of the electrode", h5py.ref_dtype)
    _column(table, "group_name", [groups[0 if i < 96 else 1].name.rsplit("/", 1)[1]
                                  for i in range(192)], "name of the ElectrodeGroup", STR)
    return table


def _write_trials(h5: h5py.File, plans: list[TrialPlan]) -> None:
    trials = h5.create_group("intervals/trials")
    columns = ["start_time", "stop_time", "trial_type", "trial_version", "maze_id", "success",
               "target_on_time", "go_cue_time", "move_onset_time", "rt", "delay", "num_targets",
               "target_pos", "num_barriers", "barrier_pos", "active_target", "split"]
    _table(trials, "experimental trials", columns, np.arange(len(plans)),
           neurodata_type="TimeIntervals", namespace="core")
    def rel(attr: str) -> np.ndarray:      # whole ms -> s in one division: nearest double
        return np.array([p.start_ms + getattr(p, attr) for p in plans]) / 1000.0

    def ints(values) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    cond = [p.condition for p in plans]
    _column(trials, "start_time", np.array([p.start_ms for p in plans]) / 1000.0,
            "start time of the trial")
    _column(trials, "stop_time", rel("duration"), "end time of the trial")
    _column(trials, "trial_type", ints([c.trial_type for c in cond]), "maze identity")
    _column(trials, "trial_version", ints([c.trial_version for c in cond]),
            "0: one target; 1: one target with barriers; 2: three targets, one reachable")
    _column(trials, "maze_id", ints([c.maze_id for c in cond]), "maze configuration id")
    _column(trials, "success", np.ones(len(plans), bool), "whether the trial was successful")
    _column(trials, "target_on_time", rel("target_on"), "time the targets appeared")
    _column(trials, "go_cue_time", rel("go"), "time of the go cue")
    _column(trials, "move_onset_time", rel("onset"), "time of movement onset")
    _column(trials, "rt", ints([p.rt for p in plans]), "reaction time in ms")
    _column(trials, "delay", ints([p.delay for p in plans]), "instructed delay in ms")
    _column(trials, "num_targets", ints([len(c.targets) for c in cond]), "number of targets")
    _ragged(trials, "target_pos", [c.targets for c in cond], "target positions (x, y) in mm", np.int64)
    _column(trials, "num_barriers", ints([len(c.barriers) for c in cond]), "number of barriers")
    _ragged(trials, "barrier_pos", [c.barriers for c in cond],
            "barriers (cx, cy, half_width, half_height) in mm", np.int64)
    _column(trials, "active_target", ints([c.active for c in cond]),
            "index of the reachable target within the trial's target_pos rows")
    _column(trials, "split", [p.split for p in plans], "data split", STR)


def _write_units(h5: h5py.File, gen: Generated, electrodes: h5py.Group) -> None:
    units = h5.create_group("units")
    _table(units, "sorted units", ["spike_times", "obs_intervals", "electrodes", "heldout"],
           gen.units.ids, neurodata_type="Units", namespace="core")
    _ragged(units, "spike_times", gen.spikes, "spike times in s", np.float64)
    spans = np.array([[p.start_ms, p.start_ms + p.duration] for p in gen.plans]) / 1000.0
    _ragged(units, "obs_intervals", [spans] * len(gen.spikes), "observation intervals", np.float64)
    # MC_Maze quirk kept on purpose: M1 units' stored electrode rows are 96 too low.
    stored = np.where(gen.units.electrodes >= 96, gen.units.electrodes - 96, gen.units.electrodes)
    _ragged(units, "electrodes", [np.array([e]) for e in stored.tolist()],
            "electrode of each unit", np.int64)
    region = units["electrodes"]
    _typed(region, "DynamicTableRegion", "hdmf-common", table=electrodes.ref,
           description="electrode of each unit")
    _column(units, "heldout", gen.units.heldout, "held out for the NLB co-smoothing metric")


def _write_behavior(h5: h5py.File, behavior: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    module = h5.create_group("processing/behavior")
    _typed(module, "ProcessingModule", description="behavioural data")
    module.attrs["object_id"] = _object_id(h5, module.name)
    kinds = {"cursor_pos": ("SpatialSeries", "mm", "cursor position"),
             "hand_pos": ("SpatialSeries", "mm", "hand position"),
             "eye_pos": ("SpatialSeries", "mm", "eye position"),
             "hand_vel": ("TimeSeries", "mm/s", "hand velocity (np.gradient of hand_pos)")}
    for name, (timestamps, data) in behavior.items():
        kind, unit, description = kinds[name]
        group = module.create_group(name)
        _typed(group, kind, description=description, comments="no comments")
        group.attrs["object_id"] = _object_id(h5, group.name)
        d = group.create_dataset("data", data=data.astype(np.float64))
        d.attrs.update(unit=unit, conversion=1.0, resolution=-1.0, offset=0.0)
        ts = group.create_dataset("timestamps", data=timestamps)
        ts.attrs.update(interval=1, unit="seconds")


# ---- ensure (start-up) -------------------------------------------------------------------------

def ensure_dataset(config) -> Path:
    """The data file to serve. The synthetic default is (re)generated, with one log line, when it
    is missing or was made by an older generator; any other missing file is a DatasetError."""
    from protocol.config import DEFAULT_SYNTHETIC_PATH
    path = Path(config.resolved_data_path())
    is_default = path.resolve() == DEFAULT_SYNTHETIC_PATH.resolve()
    if path.exists() and (not is_default or _is_current(path)):
        return path
    if not is_default:
        raise DatasetError(f"dataset file not found: {path} (set by PHANTOM_DATA_PATH)")
    why = "first run" if not path.exists() else "made by an older generator"
    log.info("generating the synthetic MC_Maze_Small recording at %s (%s, takes a few seconds)",
             path, why)
    generate_file(path)
    return path


def _is_current(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as h5:
            found = h5["identifier"][()]
    except (OSError, KeyError):
        return False
    found = found.decode() if isinstance(found, bytes) else str(found)
    return found == identifier(SHAPES["small"].label, DEFAULT_SEED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--ensure", action="store_true",
                        help="make sure the configured dataset exists (generate the synthetic default)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, help="output NWB path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.ensure:
        from protocol.config import ConfigError, load_config
        try:
            ensure_dataset(load_config())
        except (ConfigError, DatasetError) as exc:
            log.error("%s", exc)
            return 2 if isinstance(exc, ConfigError) else 1
        return 0
    if args.out is None:
        parser.error("--out is required unless --ensure is given")
    began = time.monotonic()
    generate_file(args.out, args.shape, args.seed)
    log.info("wrote %s (%s, seed %d) in %.1f s", args.out, SHAPES[args.shape].label, args.seed,
             time.monotonic() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
