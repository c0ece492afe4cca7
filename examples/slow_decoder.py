"""A deliberately slow decoder: each prediction takes longer than a bin (25 ms), so its answers
arrive after the next bin was published. The evaluation shows the deadline misses.

Against `make run`:

    python examples/slow_decoder.py                 # 35 ms per prediction, 8 s of live stream
    python examples/slow_decoder.py --delay-ms 10   # fast enough: no misses
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import phantomlink


class SlowDecoder(phantomlink.Decoder):
    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def predict(self, neural_observations):
        time.sleep(self.delay_s)               # stands in for an expensive model
        return np.zeros((1, 2))

    def observe(self, neural_observations):
        self.predict(neural_observations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--ws-url", default=None)
    parser.add_argument("--delay-ms", type=float, default=35.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    bins = int(args.seconds * 40)
    result = phantomlink.evaluate(SlowDecoder(args.delay_ms / 1000), url=args.url, ws_url=args.ws_url,
                                  lockstep=False, stop_packet=bins, name=f"slow-{args.delay_ms:g}ms",
                                  token=args.token)
    ev = result["evaluation"]
    print(f"{result['bins']} predictions answered at {result['bins_per_second']} bins/s "
          f"(the stream runs at 40)")
    print(f"latency p50 {ev['latency_ms']['p50']} ms, p99 {ev['latency_ms']['p99']} ms, "
          f"max {ev['latency_ms']['max']} ms")
    print(f"deadline misses: {ev['deadline_misses']} of {ev['predictions']}; missing: {ev['missing']}; "
          f"normalized latency {ev['normalized_latency']:.2f} (above 1: slower than real time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
