"""Draws docs/figures/perturb_<kind>.png for every perturbation kind and prints the noise
variance table of docs/perturbations.md.

Each neural figure: the clean and perturbed raster of 40 units over 30 s of the default
(synthetic MC_Maze-shaped) recording, and the population rate of both in 1 s bins, with the
perturbation switched on at 10 s (ramping over 5 s where the kind has a ramp in the figure).
The transport figure plays 600 ticks through each fault and plots when each sequence number
would leave the broker. Everything comes from the engine itself (broker.perturb).

usage: make figures   (or .venv/bin/python docs/figures/make_perturbation_figures.py; matplotlib
       comes with the dev extra)
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from broker.binning import load_recording  # noqa: E402
from broker.perturb.engine import Perturber, UnitStats  # noqa: E402
from broker.perturb.spec import KINDS, parse_set  # noqa: E402
from broker.perturb.transport import TransportFaults  # noqa: E402
from broker.synthetic import ensure_dataset  # noqa: E402
from protocol.config import load_config  # noqa: E402

WINDOW_S, START_S, RAMP_S, UNITS = 30.0, 10.0, 5.0, 40
NEURAL = {"noise": "intense", "drift": "extreme", "dropout": "half", "gain": "perge2013",
          "offset": "willett", "tuning_drift": "willett", "nonstationarity": "perge2013",
          "micro_movement": "perge2013", "turnover": "daily", "sorting": "typical"}
OVERRIDES = {"tuning_drift": {"step_sd": 0.05}, "drift": {"drift_period_seconds": 10.0},
             "turnover": {"lost": 0.2, "new": 0.2}, "sorting": {"merge": 0.2, "split": 0.2}}
RAMPED = {"dropout", "nonstationarity", "turnover"}


def engine(rec, stats, items, code="figure", seed=3):
    pset = parse_set({"seed": seed, "items": items}, rec.bin_ms, rec.n_units)
    return Perturber(code, stats, rec.n_bins, rec.bin_ms, rec.trial_index, rec.observed,
                     [(pset.seed, list(pset.items))], clean=rec.counts)


def play(rec, eng, first, last):
    out = rec.counts[first:last].astype(np.int64).copy()
    for i, p in enumerate(range(first, last)):
        counts = eng.counts(p, rec.counts[p])
        if counts is not None:
            out[i] = counts
    return out


def neural_figure(rec, stats, kind, first):
    bins = int(WINDOW_S * 1000 / rec.bin_ms)
    start = first + int(START_S * 1000 / rec.bin_ms)
    item = {"kind": kind, "preset": NEURAL[kind], "start_packet": start, **OVERRIDES.get(kind, {})}
    if kind in RAMPED:
        item["ramp_packets"] = int(RAMP_S * 1000 / rec.bin_ms)
    clean = rec.counts[first:first + bins].astype(np.int64)
    perturbed = play(rec, engine(rec, stats, [item]), first, first + bins)
    busiest = np.sort(np.argsort(clean.sum(0))[-UNITS:])
    t = np.arange(bins) * rec.bin_ms / 1000.0
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True,
                             gridspec_kw={"height_ratios": [2, 2, 1.3]})
    for ax, data, title in ((axes[0], clean, "clean"), (axes[1], perturbed, f"{kind} ({NEURAL[kind]})")):
        ax.imshow(np.minimum(data[:, busiest].T, 3), aspect="auto", cmap="Greys", interpolation="nearest",
                  extent=(0, WINDOW_S, UNITS, 0), vmin=0, vmax=3)
        ax.set_ylabel("unit (40 busiest)")
        ax.set_title(title, loc="left", fontsize=10)
    per_s = int(1000 / rec.bin_ms)
    seconds = bins // per_s
    hz = 1000.0 / rec.bin_ms
    for data, label, style in ((clean, "clean", "-"), (perturbed, "perturbed", "-")):
        rate = data[:seconds * per_s].reshape(seconds, per_s, -1).mean((1, 2)) * hz
        axes[2].step(np.arange(seconds) + 1, rate, style, where="pre", label=label)
    axes[2].set_ylabel("mean rate (Hz)")
    axes[2].set_xlabel("time in the window (s)")
    axes[2].legend(loc="upper left", fontsize=8)
    for ax in axes:
        ax.axvline(START_S, color="tab:red", lw=1)
        if kind in RAMPED:
            ax.axvline(START_S + RAMP_S, color="tab:red", lw=1, ls="--")
    fig.suptitle(KINDS[kind].models, fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / f"perturb_{kind}.png", dpi=80)
    plt.close(fig)


def transport_figure(rec):
    faults = {"drop": {"rate": 0.1}, "burst_drop": {"p_enter": 0.02, "p_exit": 0.25},
              "latency": {"delay_ms": 20, "jitter_ms": 15}, "duplicate": {"rate": 0.05},
              "reorder": {"rate": 0.05}, "freeze": {"rate_per_min": 20, "duration_ms": 500}}
    interval = rec.bin_ms / 1000.0
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, (kind, params) in zip(axes.ravel(), faults.items()):
        pset = parse_set({"seed": 4, "items": [{"kind": kind, **params}]}, rec.bin_ms, rec.n_units)
        tf = TransportFaults(list(pset.items), pset.seed, "figure", rec.bin_ms)
        sent, seqs, copies, marked = [], [], [], []
        for tick in range(600):
            plan = tf.plan(tick, tick, interval)
            if plan.lost is not None or plan.duplicate or plan.marks:
                marked.append(tick)
            if plan.lost is None:
                sent.append(tick * interval + plan.delay_s)
                seqs.append(tick)
                if plan.duplicate:
                    copies.append((tick * interval + plan.delay_s + 0.002, tick))
        order = np.argsort(sent, kind="stable")
        ax.plot(np.array(sent)[order], np.array(seqs)[order], ".", ms=2)
        if copies:
            ax.plot(*zip(*copies), "x", color="tab:red", ms=4, label="duplicate")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{kind} {params}", fontsize=8)
        centre = next((m for m in marked if m > 40 and kind != "latency"), 300)
        ax.set_xlim((centre - 40) * interval, (centre + 40) * interval)
        ax.set_ylim(centre - 40, centre + 40)
    for ax in axes[-1]:
        ax.set_xlabel("send time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("sequence number")
    fig.suptitle("transport faults: when each sequence number leaves the broker (2 s around a fault)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "perturb_transport.png", dpi=80)
    plt.close(fig)


def variance_table(rec, stats):
    """Measured mean and variance of the noisy count per clean count, for each preset."""
    print("| preset (noise_std) | " + " | ".join(f"count {c}" for c in range(5)) + " |")
    print("|---|" + "---|" * 5)
    observed = np.flatnonzero(rec.observed)
    for preset in ("light", "moderate", "intense", "extreme"):
        eng = engine(rec, stats, [{"kind": "noise", "preset": preset}], code=f"table-{preset}")
        noisy = np.array([eng.counts(p, rec.counts[p]) for p in observed])
        clean = rec.counts[observed]
        cells = []
        for c in range(5):
            at = noisy[clean == c]
            cells.append(f"{at.mean():.2f} / {at.var():.2f}" if at.size > 100 else "-")
        sigma = KINDS["noise"].presets[preset].values["noise_std"]
        print(f"| {preset} ({sigma}) | " + " | ".join(cells) + " |")


def main() -> None:
    config = load_config({})
    rec = load_recording(ensure_dataset(config), config.bin_ms)
    stats = UnitStats.of(rec.counts, rec.observed)
    first = int(np.flatnonzero(rec.observed)[0])
    for kind in NEURAL:
        neural_figure(rec, stats, kind, first)
        print(f"wrote {HERE / f'perturb_{kind}.png'}")
    transport_figure(rec)
    print(f"wrote {HERE / 'perturb_transport.png'}")
    variance_table(rec, stats)


if __name__ == "__main__":
    main()
