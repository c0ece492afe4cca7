"""Runs every benchmark in this folder, one after another, with the settings the docs quote.

`make bench` calls this. Each script prints its own figures; run them one at a time (as here) so
they do not compete for the machine's two cores. Extra arguments go to every script's argv only
through the table below: edit it, not the scripts, to change what `make bench` measures.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = [
    ("bench_dataset.py", []),
    ("bench_broker.py", []),
    ("bench_scale.py", []),
    ("bench_control.py", ["--requests", "1000", "--windows", "8"]),
    ("bench_control_floor.py", ["--windows", "12", "--requests", "1000"]),
    ("bench_ws.py", ["--seconds", "10"]),
    ("bench_lsl.py", []),
    ("bench_eval.py", ["--seconds", "30", "--repeats", "3"]),
    ("bench_frontdoor.py", ["--rounds", "8", "--requests", "1000", "--seconds", "5"]),
    ("bench_dashboard.py", []),
    ("bench_perturb.py", []),
]


def main() -> int:
    failed = []
    for script, args in RUNS:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent)
        print(f"=== {script}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
