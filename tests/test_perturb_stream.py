"""Perturbations measured from outside: a real broker replays the recording clean and perturbed,
and the tests compare the two streams packet by packet (nothing here uses the engine's code)."""
from __future__ import annotations

import numpy as np
import pytest

from broker_client import BrokerClient
from processes import Proc, base_env


@pytest.fixture(scope="module")
def replay_broker(tmp_path_factory):
    """One broker for the whole module (a replay at speed 1000 takes about half a second)."""
    state = tmp_path_factory.mktemp("perturb") / "state.json"
    proc = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                       PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                       PHANTOM_STATE_PATH=str(state),
                                       PHANTOM_LATE_SKIP_MS="60000"))
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(replay_broker):
    c = BrokerClient(replay_broker.ready)
    yield c
    c.close()


def replay(client, code: str, **create_args) -> dict[str, np.ndarray]:
    """Every packet of one whole replay (loop off, speed 1000) as arrays indexed by packet id."""
    total = client.call("dataset")["total_packets"]
    client.call("create", code=code, speed=1000, loop=False, paused=True, **create_args)
    sub = client.session(code)
    client.call("resume", code=code)
    packets = sub.packets(code, total, timeout=60)
    sub.close()
    ids = np.array([p["packet_id"] for p in packets])
    assert np.array_equal(ids, np.arange(total))
    return {"counts": np.array([p["spikes"]["spike_counts"] for p in packets], dtype=np.int64),
            "observed": np.array([p["observed"] for p in packets]),
            "packets": packets}


@pytest.fixture(scope="module")
def clean(replay_broker):
    c = BrokerClient(replay_broker.ready)
    try:
        yield replay(c, "clean-ref")
    finally:
        c.close()


def test_noise_keeps_the_mean_rate(client, clean):
    """The original's moderate preset (noise_std 0.5, drift off): the mean rate stays within 2 %."""
    noisy = replay(client, "mean-noise", noise={"noise_std": 0.5, "enable_drift": False, "seed": 3})
    ratio = noisy["counts"].mean() / clean["counts"].mean()
    assert abs(ratio - 1) <= 0.02, f"noisy/clean mean rate {ratio:.3f}"
    spiking = clean["counts"] > 0
    assert (noisy["counts"] != clean["counts"])[spiking].mean() > 0.3   # the noise is really on


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
    noisy = replay(client, "indep-noise", noise={"noise_std": 1.0, "enable_drift": False, "seed": 5})
    keep = clean["observed"] & noisy["observed"]
    residual = (noisy["counts"] - clean["counts"])[keep].astype(float)
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
    again = replay(client, "det-a", noise=spec)
    assert np.array_equal(a["counts"], again["counts"])
    other = replay(client, "det-b", noise=spec)
    spiking = a["counts"] > 0
    assert (a["counts"] != other["counts"])[spiking].mean() > 0.3   # another session, other noise
