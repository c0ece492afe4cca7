"""The fuzz benchmark in small: garbage at every socket of a real stack leaves it whole.

benchmarks/bench_fuzz.py with its full counts is the benchmark (figures in docs/security.md); this
runs a few hundred of each kind on every `make test`, so a regression fails the suite.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from processes import REPO_ROOT


@pytest.mark.slow
def test_garbage_everywhere_crashes_nothing_and_changes_no_victim():
    done = subprocess.run([sys.executable, "benchmarks/bench_fuzz.py", "--rest", "400", "--zmq", "400",
                           "--ws", "60", "--seed", "5"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=110)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout + done.stderr
    assert "victim sessions changed: 0 of 5" in done.stdout
