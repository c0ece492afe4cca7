"""A ridge decoder: calibrates on the first trials of a session that shows the labels, then is
evaluated live on later trials of a session that withholds them, and prints R², latency and
success rate.

Against `make run` (control on :8000, WebSocket bridge on :8001):

    python examples/ridge_decoder.py                       # calibrate on 30 trials, evaluate 10
    python examples/ridge_decoder.py --lockstep --trials 70  # the rest of the replay, as fast as it runs

Features: each unit's spike counts summed over the last HISTORY bins (causal), plus a constant;
ridge regression to (vx, vy) in closed form. Needs only numpy and the phantomlink package.
"""
from __future__ import annotations

import argparse
from collections import deque

import numpy as np

import phantomlink

HISTORY = 6         # bins of spike history per feature (150 ms at 25 ms bins)


class RidgeDecoder(phantomlink.Decoder):
    """Linear map from recent spike counts to velocity (FALCON's BCIDecoder interface)."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights
        self.window: deque[np.ndarray] = deque(maxlen=HISTORY)

    def reset(self, dataset_tags=None):
        self.window.clear()

    def features(self, counts: np.ndarray) -> np.ndarray:
        self.window.append(counts)
        return np.append(np.sum(self.window, axis=0), 1.0)

    def predict(self, neural_observations):
        return (self.features(neural_observations[0]) @ self.weights)[None, :]

    def observe(self, neural_observations):
        self.features(neural_observations[0])

    def on_done(self, dones):
        pass


def calibrate(client: phantomlink.Client, ws_url: str | None, n_trials: int,
              ridge: float) -> tuple[np.ndarray, int]:
    """Stream the first ``n_trials`` trials in lock-step with labels; fit ridge weights.
    Returns the weights and the first packet id after the calibration trials."""
    trials = client.trials()["trials"]
    stop = trials[n_trials]["first_bin"]
    created = client.create_session(lockstep=True, loop=False, paused=True)
    code = created["session_code"]
    base = ws_url or created["stream_url"].split("/stream/")[0]
    fitter = RidgeDecoder(np.zeros((0, 2)))
    rows, targets = [], []
    with phantomlink.WebSocketStream(phantomlink.stream_url(base, code), client.token) as stream:
        items = iter(stream)
        next(items)
        client.resume(code)
        for item in items:
            if isinstance(item, phantomlink.Metadata):
                if item.ended:
                    break
                continue
            if item.packet_id >= stop:
                break
            x = fitter.features(item.spikes.astype(float))
            if item.observed and np.isfinite(item.velocity).all():
                rows.append(x)
                targets.append(item.velocity)
            stream.send(phantomlink.prediction(item, (0.0, 0.0), decoder="calibration"))
    client.delete_session(code)
    X, Y = np.array(rows), np.array(targets)
    weights = np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ Y)
    print(f"calibrated on {n_trials} trials: {len(X)} bins, {X.shape[1] - 1} features")
    return weights, stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="control (or the front door)")
    parser.add_argument("--ws-url", default=None, help="WebSocket bridge base URL (default: control's)")
    parser.add_argument("--calibration-trials", type=int, default=30)
    parser.add_argument("--trials", type=int, default=10, help="trials to evaluate after calibration")
    parser.add_argument("--ridge", type=float, default=100.0)
    parser.add_argument("--lockstep", action="store_true", help="lock-step instead of live (speed 1)")
    parser.add_argument("--token", default=None, help="access token (default: PHANTOM_AUTH_TOKEN)")
    args = parser.parse_args()
    with phantomlink.Client(args.url, args.token) as client:
        weights, start = calibrate(client, args.ws_url, args.calibration_trials, args.ridge)
        trials = client.trials()["trials"]
    last = args.calibration_trials + args.trials          # first trial not evaluated
    stop = trials[last]["first_bin"] if last < len(trials) else None
    result = phantomlink.evaluate(RidgeDecoder(weights), url=args.url, ws_url=args.ws_url,
                                  lockstep=args.lockstep, start_packet=start, stop_packet=stop,
                                  name="ridge", token=args.token)
    ev = result["evaluation"]
    print(f"session {result['session']}: {result['bins']} bins at {result['bins_per_second']} bins/s, "
          f"labels withheld, {'lock-step' if args.lockstep else 'live'}")
    print(f"velocity R² {ev['velocity_r2']:.3f}, r = {ev['velocity_corr']}")
    print(f"latency p50 {ev['latency_ms']['p50']} ms, p99 {ev['latency_ms']['p99']} ms, "
          f"deadline misses {ev['deadline_misses']}, missing {ev['missing']}, "
          f"normalized latency {ev['normalized_latency']:.4f}")
    t = ev["trials"]
    print(f"pseudo-closed-loop: {t['scored']} reaches, success rate {t['success_rate']}, "
          f"time to target {t['mean_time_to_target_s']} s, path efficiency {t['path_efficiency']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
