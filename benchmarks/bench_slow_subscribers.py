"""The broker's memory under subscribers that stop reading: it plateaus at one full queue each, and
goes back to the system when they leave.

Starts a broker (``--queue`` sets PHANTOM_PUB_QUEUE_PACKETS; default: the broker's own), creates
``--count`` sessions at ``--speed`` and connects one SUB socket to each that never reads (a receive
queue of 10 messages and a 64 KB socket buffer, so the backlog stays in the broker). Prints the
broker's RSS (VmRSS from /proc, from outside) every second for ``--fill-s`` seconds, then pauses
the sessions, closes the sockets and prints it every second for ``--after-s`` seconds more.
Passes when the RSS levelled off while filling (its last two readings within 1 MiB) and came back to
within 10 % of the growth after the subscribers left. Keep ``--fill-s`` under about 12 s: after
PHANTOM_PEER_TIMEOUT_S (10 s) without a heartbeat reply, which waits behind the unread data, the
broker drops such a subscriber itself.

    .venv/bin/python benchmarks/bench_slow_subscribers.py                  # 4 subscribers, default queue
    .venv/bin/python benchmarks/bench_slow_subscribers.py --queue 2000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from broker_client import command  # noqa: E402  (tests/: real processes and the broker's client)
from processes import Proc, base_env, tree_resources  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--queue", type=int, default=None, help="PHANTOM_PUB_QUEUE_PACKETS")
    parser.add_argument("--speed", type=float, default=1000.0)
    parser.add_argument("--fill-s", type=int, default=8)
    parser.add_argument("--after-s", type=int, default=12)
    args = parser.parse_args()
    extra = {"PHANTOM_PUB_QUEUE_PACKETS": str(args.queue)} if args.queue else {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Proc.module("broker", base_env(
            PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*", PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
            PHANTOM_STATE_PATH=str(Path(tmp) / "state.json"), PHANTOM_LOG_LEVEL="WARNING", **extra))
        try:
            broker.wait_ready(60)
            return run(broker, args)
        finally:
            broker.stop()


def run(broker: Proc, args) -> int:
    def rss() -> float:
        return tree_resources(broker.popen.pid)["rss_kb"] / 1024

    codes = [f"slow-{i}" for i in range(args.count)]
    for code in codes:
        command(broker, "create", code=code, speed=args.speed)
    time.sleep(1)
    base = rss()
    ctx = zmq.Context()
    subs = []
    for code in codes:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.setsockopt(zmq.RCVBUF, 65536)
        sub.connect(broker.ready["pub"])
        sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
        subs.append(sub)
    filling = []
    for _ in range(args.fill_s):
        time.sleep(1)
        filling.append(rss() - base)
    for code in codes:
        command(broker, "pause", code=code)
    for sub in subs:
        sub.close()
    ctx.term()
    after = []
    for _ in range(args.after_s):
        time.sleep(1)
        after.append(rss() - base)
    peak = max(filling)
    print(f"{args.count} subscribers that never read, sessions at speed {args.speed:g}, queue "
          f"{args.queue or 'default'}; broker RSS {base:.1f} MiB before")
    print("filling (MiB above it, each second): " + " ".join(f"{v:+.1f}" for v in filling))
    print("after they left:                     " + " ".join(f"{v:+.1f}" for v in after))
    print(f"plateau {filling[-1]:+.1f} MiB ({filling[-1] / args.count:.1f} MiB per subscriber); "
          f"{after[-1]:+.1f} MiB {args.after_s} s after they left")
    levelled = abs(filling[-1] - filling[-2]) <= 1.0
    given_back = after[-1] <= 0.1 * peak
    failures = ([] if levelled else ["RSS still growing at the end of the fill"]) + \
               ([] if given_back else [f"{after[-1]:.1f} of {peak:.1f} MiB still held"])
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
