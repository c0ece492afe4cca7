"""Perturbation benchmarks: the engine's cost per packet and the broker's lateness with it on.

  engine      every neural kind at its preset on the recording's 142 units: microseconds per
              packet (the counts, as the broker calls it: the engine holds the recording's counts
              and computes runs of packets ahead), over 7 runs of 2000 packets after a warm-up
              pass (whose time, building the segment tables, is printed as first_pass_ms); beside it
              the same with the spikes fragment encoded, the engine without the recording (one
              packet at a time, as the tests drive it), the transport plan of every transport
              kind, and one 142-element numpy multiply for scale (target: neural stack <= 20 us,
              wall clock; neural_cpu_* is the same loop's CPU time, which a shared machine
              inflates much less)
  many100     100 sessions with the full neural stack, all consumed by this process: lateness
              (`sent_at - scheduled_at` of every packet received) p99 (target <= 0.5 ms), with the
              same run clean beside it for the ratio
  faults100   the same plus latency (5 +- 2 ms) and 1 % duplicates: the broker's own lateness
              against each packet's planned send time (metrics `timing_error_ms`), p99 over
              sessions (target <= 0.5 ms); packet lateness then includes the injected delay

  instructions  the engine's instructions per packet as counted by valgrind's callgrind (the
              same on a loaded machine: compare versions with it); not in the default run

With perturbations on, many100 and faults100 also print `prepared_ahead` / `at_deadline`: how many
of the packets sent had their perturbed counts prepared in the broker's idle time before they were
due, and how many were computed when they fell due (the sessions' `perturbation_compute` metrics).
`--priority realtime` runs the broker and this subscriber SCHED_FIFO (needs root), as
bench_broker.py does: on a machine shared with other work, it keeps their load out of the figures.

usage: python benchmarks/bench_perturb.py [engine] [many100] [faults100] [instructions] [--seconds S]
                                          [--priority auto|normal|high|realtime]
Prints one line per figure and PASS/FAIL per target; exits 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import bench_broker  # noqa: E402
from bench_broker import Broker, collect, gaps, lateness_report, show, wait_meta  # noqa: E402
from protocol.wire import session_topic  # noqa: E402

ENGINE_TARGET_US = 20.0
ENGINE_PACKETS = 2000
LATENESS_TARGET_MS = 0.5
NEURAL = [("noise", "moderate"), ("drift", "moderate"), ("dropout", "fifth"), ("gain", "perge2013"),
          ("offset", "willett"), ("tuning_drift", "willett"), ("nonstationarity", "perge2013"),
          ("micro_movement", "perge2013"), ("turnover", "daily"), ("sorting", "typical")]
TRANSPORT = [("drop", "lossy"), ("burst_drop", "wireless"), ("latency", "wifi"),
             ("duplicate", "rare"), ("reorder", "rare"), ("clock_drift", "crystal"), ("freeze", "stall")]


def stack(kinds) -> list[dict]:
    return [{"kind": kind, "preset": preset} for kind, preset in kinds]


def verdict(name: str, value: float, target: float, unit: str) -> bool:
    ok = value <= target
    print(f"{'PASS' if ok else 'FAIL'} {name}: {value:.4g} {unit} (target <= {target:g} {unit})", flush=True)
    return ok


def engine_setup():
    """The recording, its unit statistics, the full preset stack and the 2000 packets timed."""
    from broker.binning import load_recording
    from broker.perturb.engine import UnitStats
    from broker.perturb.spec import parse_set
    from broker.synthetic import ensure_dataset
    from protocol.config import load_config
    config = load_config({})
    rec = load_recording(ensure_dataset(config), config.bin_ms)
    stats = UnitStats.of(rec.counts, rec.observed)
    pset = parse_set({"seed": 1, "items": stack(NEURAL + TRANSPORT)}, rec.bin_ms, rec.n_units)
    ids = [i for i in range(rec.n_bins) if rec.observed[i]][:ENGINE_PACKETS]
    return rec, stats, pset, ids


def engine_passes(passes: int) -> None:
    """The engine as the broker builds it, a warm-up pass, then ``passes`` timed passes' worth of
    work: what `instructions` runs under callgrind."""
    from broker.perturb.engine import Perturber
    rec, stats, pset, ids = engine_setup()
    engine = Perturber("bench-0", stats, rec.n_bins, rec.bin_ms, rec.trial_index, rec.observed,
                       [(pset.seed, list(pset.items))], clean=rec.counts)
    for _ in range(1 + passes):
        for p in ids:
            engine.counts(p, rec.counts[p])


def bench_instructions() -> bool:
    """Instructions per packet of the engine (valgrind's callgrind, which counts the same on a
    loaded machine): a run with 2 passes minus a run with none, over 2 x 2000 packets."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("FAIL instructions: valgrind is not installed", flush=True)
        return False
    collected = {}
    for passes in (0, 2):
        # one BLAS thread: OpenBLAS's idle helper thread would otherwise be counted spinning
        run = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, __file__, "--engine-passes", str(passes)],
                             env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True,
                             text=True, check=True)
        collected[passes] = int(re.search(r"Collected : (\d+)", run.stderr).group(1))
    show("instructions", {"packets": 2 * ENGINE_PACKETS,
                          "per_packet": (collected[2] - collected[0]) / (2 * ENGINE_PACKETS)})
    return True


def bench_engine() -> bool:
    from broker.frames import PacketEncoder
    from broker.perturb.engine import Perturber
    rec, stats, pset, ids = engine_setup()
    fragment = PacketEncoder(rec).spikes_fragment
    neural_runs, encoded_runs, single_runs, plan_runs, build_runs, op_runs = [], [], [], [], [], []
    cpu_runs = []
    row, gain = rec.counts[ids[0]], np.ones(rec.n_units)
    for run in range(7):
        engine = Perturber(f"bench-{run}", stats, rec.n_bins, rec.bin_ms, rec.trial_index,
                           rec.observed, [(pset.seed, list(pset.items))], clean=rec.counts)
        counts, faults = rec.counts, engine.faults
        build = time.perf_counter()
        for p in ids:                      # warm-up: segment tables, draws, per-trial offsets
            engine.counts(p, counts[p])
        build_runs.append((time.perf_counter() - build) * 1e3)
        start, start_cpu = time.perf_counter(), time.thread_time()
        for p in ids:
            engine.counts(p, counts[p])
        neural_runs.append((time.perf_counter() - start) / len(ids) * 1e6)
        cpu_runs.append((time.thread_time() - start_cpu) / len(ids) * 1e6)
        start = time.perf_counter()
        for p in ids:
            fragment(engine.counts(p, counts[p]))
        encoded_runs.append((time.perf_counter() - start) / len(ids) * 1e6)
        single = Perturber(f"bench-{run}", stats, rec.n_bins, rec.bin_ms, rec.trial_index,
                           rec.observed, [(pset.seed, list(pset.items))])
        for p in ids:
            single.counts(p, counts[p])
        start = time.perf_counter()
        for p in ids:
            single.counts(p, counts[p])
        single_runs.append((time.perf_counter() - start) / len(ids) * 1e6)
        start = time.perf_counter()
        for tick, p in enumerate(ids):
            faults.plan(tick, p, 0.025)
        plan_runs.append((time.perf_counter() - start) / len(ids) * 1e6)
        start = time.perf_counter()
        for _ in range(len(ids)):
            row * gain
        op_runs.append((time.perf_counter() - start) / len(ids) * 1e6)
    show("engine", {"units": rec.n_units, "neural_kinds": len(NEURAL), "packets_per_run": len(ids),
                    "neural_median_us": statistics.median(neural_runs), "neural_min_us": min(neural_runs),
                    "neural_max_us": max(neural_runs),
                    "neural_cpu_median_us": statistics.median(cpu_runs),
                    "neural_cpu_min_us": min(cpu_runs), "neural_cpu_max_us": max(cpu_runs),
                    "with_encoding_median_us": statistics.median(encoded_runs),
                    "one_at_a_time_median_us": statistics.median(single_runs),
                    "transport_kinds": len(TRANSPORT),
                    "plan_median_us": statistics.median(plan_runs), "plan_max_us": max(plan_runs),
                    "first_pass_ms": statistics.median(build_runs),
                    "one_numpy_op_us": statistics.median(op_runs)})
    return verdict("full neural preset stack per packet (median of 7 runs)",
                   statistics.median(neural_runs), ENGINE_TARGET_US, "us")


def play(total: int, seconds: float, perturbations: list[dict] | None):
    """``total`` sessions (perturbed as given), all consumed for ``seconds``."""
    # one subscriber connection holds every session
    b = Broker(PHANTOM_MAX_SESSIONS=str(max(1000, total)),
               PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION=str(max(64, total)))
    try:
        codes = [f"bench-{i}" for i in range(total)]
        for code in codes:
            b.call("create", code=code,
                   **({"perturbations": {"seed": 7, "items": perturbations}} if perturbations else {}))
        sub = b.subscriber(*(session_topic(c) for c in codes))
        wait_meta(sub, set(codes))
        cpu0, t0 = b.cpu_seconds(), time.monotonic()
        packets = collect(sub, seconds)
        cpu = (b.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
        metrics = b.call("metrics")["sessions"]
        return packets, metrics, cpu, b.rss_mb()
    finally:
        b.close()


def compute_figures(metrics: dict) -> dict:
    """Packets whose perturbed counts were prepared ahead / computed at their deadline, summed."""
    work = [s.get("perturbation_compute") for s in metrics.values()]
    if any(w is None for w in work):
        return {}                      # a broker without the figure
    return {"prepared_ahead": sum(w["ahead"] for w in work),
            "at_deadline": sum(w["at_deadline"] for w in work)}


def bench_many(seconds: float) -> bool:
    figures = {}
    for label, items in (("clean", None), ("perturbed", stack(NEURAL))):
        packets, metrics, cpu, rss = play(100, seconds, items)
        report = lateness_report(packets)
        figures[label] = report
        skipped = sum(s["packets_skipped"] for s in metrics.values())
        show(f"many100 {label}", {"gaps": gaps(packets), "skipped": skipped, **report,
                                  "broker_cpu_pct": cpu, "broker_rss_mb": rss,
                                  **(compute_figures(metrics) if items else {})})
    ratio = figures["perturbed"]["late_p99_ms"] / max(figures["clean"]["late_p99_ms"], 1e-9)
    print(f"many100 p99 perturbed / clean = {ratio:.2f}", flush=True)
    return verdict("100 consumed sessions, full neural stack: lateness p99",
                   figures["perturbed"]["late_p99_ms"], LATENESS_TARGET_MS, "ms")


def bench_faults(seconds: float) -> bool:
    items = stack(NEURAL) + [{"kind": "latency", "delay_ms": 5, "jitter_ms": 2},
                             {"kind": "duplicate", "rate": 0.01}]
    packets, metrics, cpu, rss = play(100, seconds, items)
    p99s = sorted(s["timing_error_ms"]["p99"] for s in metrics.values())
    dup = sum(s["perturbations"]["duplicated"] for s in metrics.values())
    show("faults100", {"packets": len(packets), "duplicated": dup,
                       "timing_p99_median_ms": statistics.median(p99s), "timing_p99_max_ms": p99s[-1],
                       "packet_late_p50_ms": lateness_report(packets)["late_p50_ms"],
                       "broker_cpu_pct": cpu, "broker_rss_mb": rss, **compute_figures(metrics)})
    return verdict("100 consumed sessions with faults: broker timing error p99 (median session)",
                   statistics.median(p99s), LATENESS_TARGET_MS, "ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["engine", "many100", "faults100"])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per broker run")
    parser.add_argument("--priority", choices=["auto", "normal", "high", "realtime"], default="auto",
                        help="broker priority (PHANTOM_BROKER_PRIORITY; default: the broker's own "
                             "default, auto); high and realtime give this subscriber the same (root)")
    parser.add_argument("--engine-passes", type=int, help=argparse.SUPPRESS)   # instructions' child
    args = parser.parse_args()
    if args.engine_passes is not None:
        engine_passes(args.engine_passes)
        return 0
    bench_broker.PRIORITY = args.priority
    bench_broker.raise_priority()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.2f}, python {platform.python_version()}, "
          f"priority {args.priority}", flush=True)
    runs = {"engine": bench_engine, "many100": lambda: bench_many(args.seconds),
            "faults100": lambda: bench_faults(args.seconds), "instructions": bench_instructions}
    unknown = [s for s in args.scenarios if s not in runs]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}")
    results = [runs[name]() for name in args.scenarios]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
