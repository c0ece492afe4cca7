"""Prometheus families built from the broker's figures, against a real broker with a real ZeroMQ
subscriber (a session publishes only while someone listens) and a real control process."""
from __future__ import annotations

import pytest
import zmq

from control_support import create, start_control
from processes import wait_for
from test_control import families


def sample_values(family, session: str) -> dict:
    return {(s.name, s.labels.get("quantile")): s.value for s in family.samples
            if s.labels.get("session") == session}


def test_lateness_summary_counts_the_packets_the_json_counts(broker, spawn):
    _, http = start_control(spawn, broker.ready["control"])
    create(http, "prom-late", speed=10)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.ready["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, b"session/prom-late/")
    try:
        timing = lambda: http.get("/metrics").json["metrics"]["sessions"]["prom-late"]["timing_error_ms"]  # noqa: E731
        wait_for(lambda: timing()["count"] >= 20, 15, "20 packets published")
        assert http.post("/api/control/prom-late/pause").status == 200
        frozen = timing()
        late = families(http)["phantomlink_session_lateness_seconds"]
        assert late.type == "summary"
        values = sample_values(late, "prom-late")
        assert values[("phantomlink_session_lateness_seconds_count", None)] == frozen["count"]
        assert values[("phantomlink_session_lateness_seconds", "0.99")] * 1000 == \
            pytest.approx(frozen["p99"])
        total = values[("phantomlink_session_lateness_seconds_sum", None)]
        assert 0 <= total <= frozen["max"] / 1000 * frozen["count"]
        sent = families(http)["phantomlink_session_packets_sent"]
        assert sample_values(sent, "prom-late")[("phantomlink_session_packets_sent_total", None)] \
            >= frozen["count"]
    finally:
        sub.close()
