"""Perturbed packets prepared in the broker's idle time, before they are due, measured from outside.

A real broker streams a perturbed session through everything that moves its position or changes
what it plays: seeks back and ahead, a wrap of the loop, speed changes, pause and resume, a new
perturbation set while paused and one while playing, and schedule boundaries (a ramp steps every
five packets). Every packet's counts must be exactly what the engine gives for that packet computed
on its own (one packet at a time, no run computed ahead, nothing prepared), and the session's
`perturbation_compute` counters must show that the packets were in fact prepared ahead, not
computed when they fell due, whenever the broker was on time.
"""
from __future__ import annotations

import numpy as np
import pytest

from broker.binning import load_recording
from broker.noise import from_saved
from broker.perturb.engine import Perturber, UnitStats
from broker.perturb.spec import parse_set
from broker.synthetic import ensure_dataset
from protocol.config import load_config

CODE = "prep-ahead"
PRESETS = (("noise", "moderate"), ("drift", "moderate"), ("dropout", "fifth"), ("gain", "perge2013"),
           ("offset", "willett"), ("tuning_drift", "willett"), ("nonstationarity", "perge2013"),
           ("micro_movement", "perge2013"), ("turnover", "daily"), ("sorting", "typical"))
SET_A = {"seed": 11, "items": [{"kind": k, "id": f"a-{k}", "preset": p} for k, p in PRESETS]
         + [{"kind": "dropout", "id": "a-ramp", "fraction": 0.5, "start_packet": 600,
             "ramp_packets": 160, "end_packet": 800}]}     # a step every 5 packets
SET_B = {"seed": 12, "items": [{"kind": k, "id": f"b-{k}", "preset": p} for k, p in PRESETS[:6]]}
SET_C = {"seed": 13, "items": [{"kind": k, "id": f"c-{k}", "preset": p} for k, p in PRESETS[3:]]}


@pytest.fixture(scope="module")
def recording():
    config = load_config({})
    return load_recording(ensure_dataset(config), config.bin_ms)


def offline(recording, noise: dict, pset: dict) -> Perturber:
    """The engine for one set, built as the broker builds it but computing one packet at a time."""
    legacy = from_saved(noise)
    parsed = parse_set(pset, recording.bin_ms, recording.n_units)
    return Perturber(CODE, UnitStats.of(recording.counts, recording.observed), recording.n_bins,
                     recording.bin_ms, recording.trial_index, recording.observed,
                     [(legacy.seed, legacy.items()), (parsed.seed, list(parsed.items))])


def test_packets_prepared_ahead_are_the_counts_computed_alone(broker, clients, recording):
    client = clients(broker)
    total = recording.n_bins
    view = client.call("create", code=CODE, speed=8, paused=True, noise="moderate",
                       perturbations=SET_A)
    noise = view["noise"]
    sub = client.session(CODE)
    packets: list[dict] = []            # (data) of every packet, in arrival order

    def play(n: int) -> None:
        packets.extend(sub.packets(CODE, n, timeout=30))

    client.call("resume", code=CODE)
    play(120)
    # into the ramp's boundaries, at speed 1: a boundary's new tables take milliseconds, longer
    # than a faster session's interval, and would then be built when the packet is due
    client.call("speed", code=CODE, speed=1)
    client.call("seek", code=CODE, packet_id=560)
    play(130)
    client.call("speed", code=CODE, speed=8)
    client.call("seek", code=CODE, packet_id=total - 40)  # the loop wraps to 0
    play(100)
    client.call("speed", code=CODE, speed=4)
    play(60)
    switched = client.call("pause", code=CODE)["sequence_number"]
    client.call("set_perturbations", code=CODE, perturbations=SET_B)   # prepared A packets wait
    client.call("resume", code=CODE)
    play(100)
    client.call("speed", code=CODE, speed=10)
    client.call("set_perturbations", code=CODE, perturbations=SET_C)   # while playing
    play(150)
    client.call("seek", code=CODE, packet_id=100)       # back
    play(100)
    paused = client.call("pause", code=CODE)["sequence_number"]
    sub.close()

    engines = {"a": offline(recording, noise, SET_A), "b": offline(recording, noise, SET_B),
               "c": offline(recording, noise, SET_C)}
    seqs = [p["sequence_number"] for p in packets]
    assert seqs == sorted(set(seqs))                     # in order, none twice
    compared = perturbed = 0
    for p in packets:
        pid = p["packet_id"]
        sets = {i.split("-", 1)[0] for i in p["perturbations"] if not i.startswith("legacy-")}
        assert len(sets) == 1, p["perturbations"]
        (name,) = sets
        if p["sequence_number"] >= switched:             # set while paused: none of A after it
            assert name in ("b", "c"), (p["sequence_number"], name)
        engine = engines[name]
        assert tuple(p["perturbations"]) == engine.active(pid)
        want = engine.counts(pid, recording.counts[pid])
        got = np.array(p["spikes"]["spike_counts"])
        if want is None:
            assert np.array_equal(got, recording.counts[pid]) and p["noise"] is False
        else:
            assert np.array_equal(got, want), (pid, name)
            assert p["noise"] is True
            compared += 1
            perturbed += not np.array_equal(got, recording.counts[pid])
    assert {total - 1, 0, 600, 640, 685} <= {p["packet_id"] for p in packets}
    assert compared > 0.6 * len(packets) and perturbed > 0.9 * compared

    figures = client.call("metrics")["sessions"][CODE]
    work = figures["perturbation_compute"]
    # every packet this session sent had perturbations on: each was computed ahead or at its
    # deadline (ticks skipped as late, on a stalled machine, were not built)
    assert work["ahead"] + work["at_deadline"] == figures["packets_sent"]
    assert figures["packets_sent"] + figures["packets_skipped"] == paused
    # prepared ahead whenever the broker was on time: a packet is computed at its deadline when
    # the loop had no idle time before it, i.e. it was behind (a stalled machine), which shows
    # as lateness in the stream; on time (sent within 1 ms) and computed there is the failure
    behind = sum((p["sent_at"] - p["scheduled_at"]) * 1000 > 1.0 for p in packets)
    assert work["at_deadline"] - behind <= 0.05 * figures["packets_sent"], (work, behind)
    assert work["ahead"] > 0.5 * figures["packets_sent"], (work, behind)


def test_a_clean_session_counts_no_perturbation_work(broker, clients):
    client = clients(broker)
    client.call("create", code="prep-clean", speed=8)
    sub = client.session("prep-clean")
    sub.packets("prep-clean", 40, timeout=30)
    sub.close()
    work = client.call("metrics")["sessions"]["prep-clean"]["perturbation_compute"]
    assert work == {"ahead": 0, "at_deadline": 0}

