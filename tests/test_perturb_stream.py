"""Perturbations measured from outside: a real broker replays the recording clean and perturbed,
and the tests compare the two streams packet by packet (nothing here uses the engine's code).

The broker runs with its default late-skip (50 ms), as users run it. A replay at speed 100 (4,000
packets/s) leaves the broker room, so it rarely skips a packet; when it does (a stalled machine),
the packet is missing from the stream and counted in `packets_skipped`, and the replay says
exactly that: every packet arrived once and in order, or was counted as skipped. Comparisons use
the packets both replays received.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from broker_client import BrokerClient
from processes import Proc, base_env
from protocol.wire import session_topic

SPEED = 100


@pytest.fixture(scope="module")
def replay_broker(tmp_path_factory):
    """One broker for the whole module (a replay at speed 100 takes about 3 s)."""
    state = tmp_path_factory.mktemp("perturb") / "state.json"
    proc = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                       PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                       PHANTOM_STATE_PATH=str(state)))
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(replay_broker):
    c = BrokerClient(replay_broker.ready)
    assert c.call("metrics")["late_skip_ms"] == 50        # the default: late packets are skipped
    yield c
    c.close()


def replay(client, code: str, **create_args) -> dict[str, np.ndarray]:
    """Every packet received from one whole replay (loop off), by packet id: ``ids`` (sorted),
    ``counts`` and ``observed`` (one row per id)."""
    total = client.call("dataset")["total_packets"]
    client.call("create", code=code, speed=SPEED, loop=False, paused=True, **create_args)
    sub = client.session(code)
    client.call("resume", code=code)
    topic = session_topic(code, "packet")
    packets, ended, deadline = [], False, time.monotonic() + 120
    while not packets or packets[-1]["packet_id"] < total - 1:
        message = sub.recv(timeout=0.5)
        if message is None:        # the last packet itself may have been skipped: ended and quiet
            if ended:
                break
            ended = client.call("metrics")["sessions"][code]["state"] == "ended"
            assert time.monotonic() < deadline, f"{code}: {len(packets)} of {total} packets in 120 s"
        elif message[0] == topic:
            packets.append(message[1]["data"])
    sub.close()
    skipped = client.call("metrics")["sessions"][code]["packets_skipped"]
    ids = np.array([p["packet_id"] for p in packets])
    assert np.all(np.diff(ids) > 0)                      # in order, none twice
    assert len(ids) + skipped == total, (len(ids), skipped, total)
    # statistics on half a replay or less would say little: a machine that stalls this much fails
    assert len(ids) >= 0.5 * total, f"{code}: {skipped} of {total} packets skipped as late"
    return {"ids": ids,
            "counts": np.array([p["spikes"]["spike_counts"] for p in packets], dtype=np.int64),
            "observed": np.array([p["observed"] for p in packets])}


def common(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of the packets both replays received (a's, b's) and whether each was observed."""
    both, ia, ib = np.intersect1d(a["ids"], b["ids"], assume_unique=True, return_indices=True)
    assert np.array_equal(a["observed"][ia], b["observed"][ib])
    return a["counts"][ia], b["counts"][ib], a["observed"][ia]


@pytest.fixture(scope="module")
def clean(replay_broker):
    c = BrokerClient(replay_broker.ready)
    try:
        yield replay(c, "clean-ref")
    finally:
        c.close()


def test_noise_keeps_the_mean_rate(client, clean):
    """The original's moderate preset (noise_std 0.5, drift off): the mean rate stays within 2 %."""
    noisy, reference, _ = common(replay(client, "mean-noise", noise={"noise_std": 0.5, "enable_drift": False,
                                                                    "seed": 3}), clean)
    ratio = noisy.mean() / reference.mean()
    assert abs(ratio - 1) <= 0.02, f"noisy/clean mean rate {ratio:.3f}"
    spiking = reference > 0
    assert (noisy != reference)[spiking].mean() > 0.3   # the noise is really on


def lagged_correlations(residual: np.ndarray, max_shift: int = 8) -> dict[tuple[int, int], float]:
    """corr(residual[k+lag, u+shift], residual[k, u]) for lag 1..2 and every shift in ±max_shift."""
    out = {}
    n_units = residual.shape[1]
    for lag in (1, 2):
        for shift in range(-max_shift, max_shift + 1):
            lo, hi = max(0, -shift), min(n_units, n_units - shift)
            a = residual[lag:, lo + shift:hi + shift].ravel()
            b = residual[:-lag, lo:hi].ravel()
            out[(lag, shift)] = float(np.corrcoef(a, b)[0, 1])
    return out


def test_noise_is_independent_across_packets_and_units(client, clean):
    """Packet k+1's noise is not packet k's shifted (the original: correlation 0.87 at shift 4)."""
    noisy, reference, observed = common(replay(client, "indep-noise", noise={"noise_std": 1.0, "enable_drift": False,
                                                                            "seed": 5}), clean)
    residual = (noisy - reference)[observed].astype(float)
    n = residual.size
    bound = 5 / np.sqrt(n)                     # five standard errors of a zero correlation
    worst = max(lagged_correlations(residual).items(), key=lambda kv: abs(kv[1]))
    assert abs(worst[1]) < bound, f"lag/shift {worst[0]}: correlation {worst[1]:.3f} (bound {bound:.3f})"
    # across units within one packet
    units = np.corrcoef(residual.T)
    off_diag = units[~np.eye(units.shape[0], dtype=bool)]
    off_diag = off_diag[np.isfinite(off_diag)]
    assert np.abs(off_diag).max() < 5 / np.sqrt(residual.shape[0]) + 0.02


def test_same_seed_same_packets_other_session_independent(client):
    spec = {"noise_std": 1.0, "enable_drift": False, "seed": 11}
    a = replay(client, "det-a", noise=spec)
    client.call("delete", code="det-a")
    first, again, _ = common(a, replay(client, "det-a", noise=spec))
    assert np.array_equal(first, again)
    first, other, _ = common(a, replay(client, "det-b", noise=spec))
    spiking = first > 0
    assert (first != other)[spiking].mean() > 0.3   # another session, other noise
