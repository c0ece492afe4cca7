"""Closed-loop evaluation end to end: real broker, control and WebSocket bridge; decoders answer over
ZMQ (DEALER, PUSH) and WebSocket; the server's figures are checked against truths computed here."""
from __future__ import annotations

import heapq
import json
import time

import msgpack
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import r2_score
from websockets.sync.client import connect

from broker_client import command
from eval_support import ZmqDecoder, answer, create, evaluation, settled, stack, truth  # noqa: F401
from processes import wait_for
from protocol import CommandError


def test_lockstep_replay_of_true_velocity_scores_one_with_every_bin_predicted_once(stack):
    broker, _, http = stack
    # a long timeout: a stall of this busy machine must not release a bin unanswered
    create(http, "ev-truth", lockstep=True, lockstep_timeout_ms=30_000, loop=False, paused=True)
    dec = ZmqDecoder(broker, "ev-truth")
    total = dec.wait_meta()["data"]["total_packets"]
    assert http.post("/api/control/ev-truth/resume", {}).status == 200
    seqs, began = [], time.perf_counter()
    while True:
        msg = dec.recv()
        if msg["type"] == "metadata":
            if msg["data"]["session"]["state"] == "ended":
                break
            continue
        d = msg["data"]
        seqs.append(d["sequence_number"])
        guess = {"target_id": d["intention"]["target_id"]} if d["intention"]["target_id"] is not None else {}
        dec.send(answer(msg, truth(d, "vx", "vy"), position=truth(d, "x", "y"), **guess))
    rate = len(seqs) / (time.perf_counter() - began)
    dec.close()
    report = settled(http, "ev-truth", "default", total)
    whole = evaluation(http, "ev-truth")
    print(f"lock-step replay: {len(seqs)} bins at {rate:.0f} bins/s")
    assert seqs == list(range(total))                   # every bin once, in order, none skipped
    assert whole["bins_published"] == total and whole["lockstep_timeouts"] == 0
    assert report["predictions"] == total and report["missing"] == 0 and report["invalid"] == 0
    assert report["velocity_r2"] == 1.0
    assert report["velocity_corr"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert report["position_error_mm"] == 0.0 and report["target_accuracy"] == 1.0
    assert report["trials"]["success_rate"] == 1.0 and report["trials"]["scored"] > 0
    assert report["deadline_misses"] == 0
    assert len(report["per_trial"]) == report["trials"]["scored"]


def test_zeros_over_websocket_score_the_r2_computed_from_the_same_packets(stack):
    _, ws, http = stack
    create(http, "ev-zeros", lockstep=True, lockstep_timeout_ms=30_000, loop=False, paused=True,
           filter={"target_id": 1})
    seen_true, seen_pred = [], []
    with connect(f"{ws.ready['url']}/stream/ev-zeros?format=json", open_timeout=10) as conn:
        assert json.loads(conn.recv(timeout=10))["type"] == "metadata"
        assert http.post("/api/control/ev-zeros/resume", {}).status == 200
        sent = 0
        while True:
            msg = json.loads(conn.recv(timeout=10))
            if msg["type"] == "metadata":
                if msg["data"]["session"]["state"] == "ended":
                    break
                continue
            d = msg["data"]
            del msg["session"]                              # the connection's session is implied
            conn.send(json.dumps(answer({"session": None, "data": d}, [0, 0], decoder="zeros")
                                 | {"session": "ev-zeros"}))
            sent += 1
            if d["observed"] and d["trial_id"] is not None and d["kinematics"]["vx"] is not None:
                seen_true.append([d["kinematics"]["vx"], d["kinematics"]["vy"]])
                seen_pred.append([0.0, 0.0])
    report = settled(http, "ev-zeros", "zeros", sent)
    expected = r2_score(np.array(seen_true), np.array(seen_pred), multioutput="variance_weighted")
    assert report["predictions"] == sent and report["invalid"] == 0
    assert report["bins_scored"] == len(seen_true)
    assert report["velocity_r2"] <= 0
    assert report["velocity_r2"] == pytest.approx(expected, abs=1e-9)


def delayed_answers(dec: ZmqDecoder, delays_ms: dict[str, float], packets: int) -> int:
    """Answer each of ``packets`` packets once per decoder, each after its delay; returns the count
    of packets answered (the last ones' answers are flushed before returning)."""
    pending: list[tuple[float, int, dict]] = []
    order = 0
    got = 0
    while got < packets or pending:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            dec.send(heapq.heappop(pending)[2] | {"sent_at": time.time()})
        wait = (pending[0][0] - now) if pending else 0.05
        if got < packets and dec.sub.poll(max(0, int(wait * 1000))):
            msg = msgpack.unpackb(dec.sub.recv_multipart()[1])
            if msg["type"] != "data":
                continue
            got += 1
            received = time.time()
            for name, delay in delays_ms.items():
                order += 1
                heapq.heappush(pending, (time.monotonic() + delay / 1000, order,
                                         answer(msg, [1.0, 1.0], name, received_at=received)))
        elif pending:
            time.sleep(max(0.0, min(pending[0][0] - time.monotonic(), 0.001)))
    return got


def test_a_decoder_delaying_its_answers_sees_that_latency_and_slow_ones_miss_deadlines(stack):
    broker, _, http = stack
    create(http, "ev-delay", paused=True, speed=0.5)       # a bin every 50 ms
    dec = ZmqDecoder(broker, "ev-delay")
    dec.wait_meta()
    assert http.post("/api/control/ev-delay/resume", {}).status == 200
    n = delayed_answers(dec, {"fast": 10.0, "slow": 70.0}, packets=80)
    dec.close()
    fast = settled(http, "ev-delay", "fast", n)
    slow = settled(http, "ev-delay", "slow", n)
    assert 10.0 <= fast["latency_ms"]["p50"] <= 13.0, fast["latency_ms"]
    assert 70.0 <= slow["latency_ms"]["p50"] <= 73.0, slow["latency_ms"]
    assert fast["client_latency_ms"]["p50"] == pytest.approx(10.0, abs=1.5)
    assert fast["normalized_latency"] == pytest.approx(fast["latency_ms"]["mean"] / 25.0, rel=1e-3)
    assert fast["deadline_misses"] <= 0.05 * n            # 10 ms < the 50 ms to the next bin
    assert slow["deadline_misses"] >= 0.95 * n            # 70 ms > 50 ms: after the next bin
    hist = fast["latency_histogram"]
    assert sum(hist["counts"]) == n
    assert sum(c for le, c in zip(hist["le_ms"], hist["counts"]) if le is not None and le <= 5) == 0
    metrics = http.get("/metrics/prometheus")
    assert metrics.status == 200
    samples = {(sample.name, sample.labels.get("le")): sample.value
               for family in text_string_to_metric_families(metrics.body.decode())
               if family.name == "phantomlink_prediction_latency_seconds"
               for sample in family.samples
               if sample.labels["session"] == "ev-delay" and sample.labels["decoder"] == "fast"}
    assert samples[("phantomlink_prediction_latency_seconds_bucket", "+Inf")] == n
    assert samples[("phantomlink_prediction_latency_seconds_count", None)] == n
    assert samples[("phantomlink_prediction_latency_seconds_bucket", "0.005")] == 0
    assert samples[("phantomlink_prediction_latency_seconds_sum", None)] == pytest.approx(
        fast["latency_ms"]["mean"] * n / 1000, rel=1e-3)


def test_bad_predictions_are_answered_counted_and_never_crash_anything(stack):
    broker, ws, http = stack
    create(http, "ev-bad", paused=True)
    dec = ZmqDecoder(broker, "ev-bad")
    dec.wait_meta()
    http.post("/api/control/ev-bad/resume", {})
    msg = next(m for m in iter(dec.recv, None) if m["type"] == "data")
    good = answer(msg, [1.0, 2.0], "bad-test")
    cases = [
        (b"\xc1garbage", "bad_request"),
        (msgpack.packb([1, 2, 3]), "bad_request"),
        (good | {"velocity": [1.0, float("nan")]}, "bad_request"),
        (good | {"velocity": [1.0, 2.0, 3.0]}, "bad_request"),
        ({k: v for k, v in good.items() if k != "packet_id"}, "bad_request"),
        (good | {"session": "no-such-session"}, "not_found"),
        (good | {"sequence_number": 10 ** 9}, "unknown_packet"),
        (good | {"packet_id": good["packet_id"] + 1}, "unknown_packet"),
        (good, None),
        (good, "duplicate"),
    ]
    for payload, code in cases:
        dec.send(payload)
        if code is not None:
            reply = dec.reply()
            assert reply["type"] == "prediction_error" and reply["error"]["code"] == code, reply
    assert not dec.out.poll(200), "an accepted prediction gets no reply"
    push = ZmqDecoder(broker, "ev-bad", push=True)
    push.send(b"\xc1garbage")
    push.send(good | {"velocity": [float("inf"), 0.0]})
    with connect(f"{ws.ready['url']}/stream/ev-bad?format=json", open_timeout=10) as conn:
        conn.send("{not json")
        conn.send(json.dumps(good | {"session": "another"}))
        errors = []
        while len(errors) < 2:
            item = json.loads(conn.recv(timeout=10))
            if item["type"] == "prediction_error":
                errors.append(item["error"]["code"])
        assert errors == ["bad_request", "bad_request"]
    report = wait_for(lambda: (evaluation(http, "ev-bad")["decoders"].get("bad-test") or {}).get(
        "invalid", 0) >= 6 and evaluation(http, "ev-bad")["decoders"]["bad-test"], 5, "invalid counted")
    # NaN, 3-vector, no packet_id, one never sent, a wrong packet id, the duplicate (the unknown
    # session's belongs to no session); then PUSH's infinity
    assert report["predictions"] == 1
    wait_for(lambda: evaluation(http, "ev-bad")["decoders"]["bad-test"]["invalid"] == 7, 5,
             "the PUSH client's bad prediction counted")
    assert broker.popen.poll() is None and ws.popen.poll() is None
    push.close()
    dec.close()


def test_evaluation_route_checks_its_query_and_delete_resets(stack):
    broker, _, http = stack
    create(http, "ev-reset", paused=True)
    dec = ZmqDecoder(broker, "ev-reset")
    dec.wait_meta()
    http.post("/api/control/ev-reset/resume", {})
    msg = next(m for m in iter(dec.recv, None) if m["type"] == "data")
    dec.send(answer(msg, [0.0, 0.0]))
    settled(http, "ev-reset", "default", 1)
    assert http.get("/api/sessions/ev-reset/evaluation?window=nope").status == 400
    assert http.get("/api/sessions/ev-reset/evaluation?lag_ms=-5").status == 422
    assert http.get("/api/sessions/ev-reset/evaluation?lag_ms=abc").status == 400
    assert http.get("/api/sessions/no-such/evaluation").status == 404
    moved = evaluation(http, "ev-reset", "?window=move&lag_ms=100")
    assert moved["options"]["window"] == "move" and moved["options"]["window_ms"] == [-250.0, 450.0]
    assert http.delete("/api/sessions/ev-reset/evaluation").status == 200
    assert evaluation(http, "ev-reset")["decoders"] == {}
    dec.close()


def test_lockstep_waits_for_the_timeout_when_nobody_answers_and_counts_it(stack):
    broker, _, http = stack
    create(http, "ev-timeout", lockstep=True, lockstep_timeout_ms=40, paused=True)
    dec = ZmqDecoder(broker, "ev-timeout")
    dec.wait_meta()
    http.post("/api/control/ev-timeout/resume", {})
    stamps = []
    while len(stamps) < 8:
        msg = dec.recv()
        if msg["type"] == "data":
            stamps.append(msg["data"]["scheduled_at"])
    dec.close()
    gaps = np.diff(stamps) * 1000
    assert np.all(gaps >= 39.0) and np.median(gaps) == pytest.approx(40.0, abs=2.0), gaps
    assert evaluation(http, "ev-timeout")["lockstep_timeouts"] >= 7
    assert http.post("/api/sessions/create", {"lockstep_timeout_ms": 0}).status == 422
    assert http.post("/api/sessions/create", {"lockstep": "yes"}).status == 400


def test_evaluation_options_survive_a_broker_restart(start_broker, tmp_path):
    state = str(tmp_path / "restart.json")
    first = start_broker(PHANTOM_STATE_PATH=state)
    command(first, "create", code="ev-kept", withhold_labels=True, lockstep=True,
            lockstep_timeout_ms=250, paused=True)
    assert first.stop() == 0
    again = start_broker(PHANTOM_STATE_PATH=state)
    kept = command(again, "get", code="ev-kept")
    assert (kept["withhold_labels"], kept["lockstep"], kept["lockstep_timeout_ms"]) == (True, True, 250)
    with pytest.raises(CommandError) as bad:
        command(again, "create", lockstep_timeout_ms=60_001)
    assert bad.value.code.value == "out_of_range"
