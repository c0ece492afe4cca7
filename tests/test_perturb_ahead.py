"""The engine as the broker runs it (holding the recording's counts, so it computes runs of packets
ahead) gives exactly the counts it gives one packet at a time, in any order of requests.

The statistical tests of each kind (tests/test_perturb_kinds.py) drive the engine one packet at a
time; this file is what makes them hold for the broker's way too.
"""
from __future__ import annotations

import numpy as np
import pytest

from broker.perturb.draws import PACKET_BLOCK
from broker.perturb.engine import Perturber, UnitStats
from broker.perturb.spec import parse_set

N_BINS, N_UNITS, BIN_MS, TRIAL_BINS = 3000, 142, 25, 70     # trials of 70 bins: blocks span two

PRESETS = (("noise", "moderate"), ("drift", "moderate"), ("dropout", "fifth"), ("gain", "perge2013"),
           ("offset", "willett"), ("tuning_drift", "willett"), ("nonstationarity", "perge2013"),
           ("micro_movement", "perge2013"), ("turnover", "daily"), ("sorting", "typical"))
# every kind at its preset; boundaries and ramps that fall inside blocks; the stacks without
# mixing, with several drifts and with noise-mode dropout take the other paths of the tables
STACKS = {
    "presets": [{"kind": k, "preset": p} for k, p in PRESETS],
    "ramped": [{"kind": k, "preset": p, "start_packet": 101 + 67 * i, "ramp_packets": 413,
                **({"end_packet": 2207 - 31 * i} if i % 2 else {})} for i, (k, p) in enumerate(PRESETS)],
    "unmixed": [{"kind": k, "preset": p} for k, p in PRESETS[:7]],
    "drifts": [{"kind": "drift", "drift_period_seconds": 7}, {"kind": "drift", "drift_amplitude": 0.1},
               {"kind": "dropout", "fraction": 0.3, "mode": "noise"}, {"kind": "sorting"}],
}


@pytest.fixture(scope="module")
def clean():
    counts = np.random.default_rng(321).poisson(3.0, (N_BINS, N_UNITS)).astype(np.uint8)
    observed = np.ones(N_BINS, bool)
    observed[(np.arange(N_BINS) % TRIAL_BINS) >= TRIAL_BINS - 6] = False     # gaps between trials
    trials = np.where(observed, np.arange(N_BINS) // TRIAL_BINS, -1).astype(np.int32)
    return counts, observed, trials


def engine(clean, items, code: str, ahead: bool) -> Perturber:
    counts, observed, trials = clean
    pset = parse_set({"seed": 4, "items": items}, BIN_MS, N_UNITS)
    return Perturber(code, UnitStats.of(counts, observed), N_BINS, BIN_MS, trials, observed,
                     [(pset.seed, list(pset.items))], clean=counts if ahead else None)


def play(e: Perturber, clean, order) -> np.ndarray:
    counts = clean[0]
    out = np.full((N_BINS, N_UNITS), -1, np.int64)
    for p in order:
        got = e.counts(int(p), counts[p])
        if got is not None:
            out[p] = got
    return out


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_computing_ahead_gives_the_same_counts_in_any_order(clean, stack):
    items = STACKS[stack]
    rng = np.random.default_rng(8)
    sequential = np.arange(N_BINS)
    # forward with seeks back and jumps ahead (what pause/seek/loop/late skips do)
    seeks = np.concatenate([np.arange(a, min(N_BINS, a + rng.integers(1, 90)))
                            for a in rng.integers(0, N_BINS, 60)])
    for code in ("ahead-a", "ahead-b"):                  # two codes: two phases of the runs
        one_by_one = play(engine(clean, items, code, ahead=False), clean, sequential)
        assert (one_by_one >= 0).sum() > 0.9 * clean[1].sum() * N_UNITS    # perturbed, not None
        for order in (sequential, rng.permutation(N_BINS), seeks):
            ahead = play(engine(clean, items, code, ahead=True), clean, order)
            asked = np.unique(order)
            assert np.array_equal(ahead[asked], one_by_one[asked]), (stack, code)


def test_runs_computed_ahead_end_at_a_phase_of_the_session_code(clean):
    """Sessions playing in step do not all compute ahead at the same packet."""
    items = STACKS["presets"]
    ends = set()
    for k in range(8):
        e = engine(clean, items, f"phase-{k}", ahead=True)
        e.counts(0, clean[0][0])
        assert 1 <= e._ahead_hi - e._ahead_lo <= PACKET_BLOCK
        ends.add(e._ahead_hi % PACKET_BLOCK)
    assert len(ends) >= 4


def test_counts_from_the_cache_are_read_only(clean):
    e = engine(clean, STACKS["presets"], "ro", ahead=True)
    got = e.counts(10, clean[0][10])
    with pytest.raises(ValueError):
        got[0] = 99
    assert np.array_equal(e.counts(10, clean[0][10]), got)


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_runs_of_any_length_the_broker_prepares_give_the_same_counts(clean, stack):
    """The broker's preparer takes the engine's work a step at a time (tables, draws, runs of 1 to
    8 packets that never cross a block of draws or a segment): the counts are the same."""
    items = STACKS[stack]
    code = "ahead-steps"
    counts = clean[0]
    one_by_one = play(engine(clean, items, code, ahead=False), clean, np.arange(N_BINS))
    e = engine(clean, items, code, ahead=True)
    rng = np.random.default_rng(5)
    out = np.full((N_BINS, N_UNITS), -1, np.int64)
    p, kinds = 0, set()
    while p < N_BINS:
        kind = e.work(p)
        kinds.add(kind)
        if kind == Perturber.BUILD:
            e.segment(p)
        elif kind == Perturber.DRAWS:
            e.make_draws(p)
        elif kind == Perturber.RUN:
            limit = e.run_limit(p)
            assert 1 <= limit <= PACKET_BLOCK and (p + limit - 1) // PACKET_BLOCK == p // PACKET_BLOCK
            e.compute_run(p, int(rng.integers(1, limit + 1)))
        else:
            got = e.counts(p, counts[p])
            if got is not None:
                out[p] = got
            p += int(rng.integers(1, 3)) if rng.random() < 0.1 else 1     # a skip now and then
            continue
        assert e.work(p) != kind                     # every step moves the packet on
    asked = np.flatnonzero((out >= 0).any(axis=1))
    assert len(asked) > 0.5 * N_BINS
    assert np.array_equal(out[asked], one_by_one[asked]), stack
    assert kinds == {Perturber.LOOKUP, Perturber.DRAWS, Perturber.RUN, Perturber.BUILD}
