"""How often liblsl crashes destroying an outlet that an inlet is connecting to (docs/lsl.md, Known issues).

    .venv/bin/python benchmarks/stress_lsl_teardown.py [--rounds 200] [--per-child 20]

pylsl alone, no PhantomLink code: each child process makes an outlet, resolves it, starts a
thread that opens inlets on it (three tries: create, open_stream, pull_sample, close), waits
0-10 ms and destroys the outlet (``del``), ``--per-child`` rounds in a row. A child killed by a
signal counts as a crash, one still running after HANG_S as a hang (some round never returned). It prints the crashes over the rounds and the liblsl version: the
figure that says whether a newer liblsl still needs the bridge's process per session
(bridges/lsl/host.py), which never destroys an outlet in a process that goes on.
"""
from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import threading
import time

CHILD = "--child"
HANG_S = 60                 # a child of --per-child rounds (about 40 ms each) that runs longer hangs


def child(rounds: int) -> None:
    import pylsl
    from pylsl.util import LostError

    for _ in range(rounds):
        name = f"Teardown{random.getrandbits(32):08x}"
        outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 142, 40, pylsl.cf_float32, name))
        found = pylsl.resolve_byprop("name", name, 1, 5)
        if not found:
            raise SystemExit(f"{name} was not found")

        def open_inlets(info=found[0]):
            for _ in range(3):
                try:
                    inlet = pylsl.StreamInlet(info, max_buflen=5, recover=False)
                    inlet.open_stream(2)
                    inlet.pull_sample(0.2)
                    inlet.close_stream()
                except (LostError, TimeoutError):
                    pass                # the outlet went: what the inlet side expects

        opener = threading.Thread(target=open_inlets)
        opener.start()
        time.sleep(random.uniform(0, 0.01))
        del outlet                      # lsl_destroy_outlet, with the inlet mid-connection
        opener.join()
        print(".", end="", flush=True)  # one round survived


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        child(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="outlets destroyed in all")
    parser.add_argument("--per-child", type=int, default=20, help="rounds per child process")
    args = parser.parse_args()
    import pylsl
    print(f"liblsl {pylsl.library_info()}", flush=True)
    done = crashes = hangs = 0
    started = time.monotonic()
    while done < args.rounds:
        n = min(args.per_child, args.rounds - done)
        try:
            result = subprocess.run([sys.executable, __file__, CHILD, str(n)], capture_output=True,
                                    text=True, timeout=HANG_S)
        except subprocess.TimeoutExpired as exc:   # run() has killed it
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            survived = out.count(".")
            hangs += 1
            print(f"round {done + survived}: hung (killed after {HANG_S} s)", flush=True)
            done += survived + 1
            continue
        survived = result.stdout.count(".")
        if result.returncode < 0:
            crashes += 1
            print(f"round {done + survived}: killed by {signal.Signals(-result.returncode).name}",
                  flush=True)
            done += survived + 1        # the child's remaining rounds are run by the next one
        elif result.returncode != 0:
            raise SystemExit(f"a child failed (exit code {result.returncode}): "
                             f"{result.stderr.strip().splitlines()[-1:]}")
        else:
            done += survived
    print(f"{crashes} crash(es) and {hangs} hang(s) in {done} outlets destroyed while an inlet "
          f"connected ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
