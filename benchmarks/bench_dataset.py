"""Benchmark of the dataset layer: cold load-and-bin, cached load, and their peak memory.

    .venv/bin/python benchmarks/bench_dataset.py                 # the default synthetic small file
    .venv/bin/python benchmarks/bench_dataset.py --shape large   # generate a large one in a temp dir
    .venv/bin/python benchmarks/bench_dataset.py --path data/raw/mc_maze.nwb

Every measurement runs in a fresh child process (so imports, page cache of the code and Python's
allocator start the same way each time). Peak memory is the child's peak resident set size: VmHWM
from /proc/self/status on Linux (`resource.getrusage(RUSAGE_SELF).ru_maxrss` elsewhere; on Linux
ru_maxrss survives execve and would report the parent's peak when the parent was bigger, e.g. after
generating a large file), in total and above the child's peak right after importing
numpy/h5py/broker (the "imports" baseline). Times are wall-clock
(`time.perf_counter`) around `load_recording` only; figures are medians of --repeat runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy, h5py
from broker.binning import content_key, load_recording

def peak_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

path, bin_ms, cache_dir = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = peak_kib()
began = time.perf_counter()
key = content_key(path)
hashed = time.perf_counter() - began
began = time.perf_counter()
rec = load_recording(path, bin_ms, cache_dir=cache_dir)
elapsed = time.perf_counter() - began
peak = peak_kib()
print(json.dumps({"seconds": elapsed, "hash_seconds": hashed, "peak_kib": peak, "base_kib": base,
                  "n_bins": rec.n_bins, "n_units": rec.n_units, "name": rec.name,
                  "counts_mib": rec.counts.nbytes / 2**20}))
"""


def _child(path: Path, bin_ms: int, cache_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(bin_ms), str(cache_dir)],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(path: Path, bin_ms: int, repeat: int) -> dict:
    cold, warm = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="phantom-bench-cache-") as cache_dir:
            cold.append(_child(path, bin_ms, Path(cache_dir)))      # empty cache: read + bin + write
            warm.append(_child(path, bin_ms, Path(cache_dir)))      # the cache written just before
    return {"cold": cold, "warm": warm}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(path: Path, bin_ms: int, runs: dict) -> None:
    first = runs["cold"][0]
    print(f"dataset: {first['name']} ({path}, {path.stat().st_size / 2**20:.1f} MiB), "
          f"{first['n_units']} units, {first['n_bins']} bins of {bin_ms} ms")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    for label, rows in (("cold load+bin+cache write", runs["cold"]), ("cached load", runs["warm"])):
        peak, base = _median(rows, "peak_kib") / 1024, _median(rows, "base_kib") / 1024
        print(f"{label:>26}: {_median(rows, 'seconds') * 1000:8.1f} ms median "
              f"(min {min(r['seconds'] for r in rows) * 1000:.1f}, max "
              f"{max(r['seconds'] for r in rows) * 1000:.1f}, n={len(rows)}); "
              f"peak RSS {peak:.0f} MiB ({peak - base:+.0f} MiB over imports)")
    print(f"{'sha256 of the file':>26}: {_median(runs['warm'], 'hash_seconds') * 1000:8.1f} ms median "
          f"(included in both loads)")
    print(f"{'binned counts':>26}: {first['counts_mib']:.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, help="NWB file (default: the synthetic small file)")
    parser.add_argument("--shape", choices=["small", "medium", "large"],
                        help="generate a synthetic file of this shape in a temp dir and use it")
    parser.add_argument("--bin-ms", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from broker.synthetic import ensure_dataset, generate_file
    from protocol.config import DEFAULT_SYNTHETIC_PATH, load_config
    with tempfile.TemporaryDirectory(prefix="phantom-bench-data-") as tmp:
        if args.shape:
            path = generate_file(Path(tmp) / f"synthetic_{args.shape}.nwb", args.shape)
        elif args.path:
            path = args.path
        else:
            path = ensure_dataset(load_config(environ={}, data_path=DEFAULT_SYNTHETIC_PATH))
        report(path, args.bin_ms, measure(path, args.bin_ms, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
