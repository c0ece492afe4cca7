"""The original PhantomLink server's routes and fields beyond its README: stop, position, the
``stats`` of ``GET /api/sessions`` and the NWB names of a trial's target."""
from __future__ import annotations

import pytest

from control_support import Http, create, stack  # noqa: F401  (module fixture)
from processes import wait_for


@pytest.fixture
def http(stack) -> Http:  # noqa: F811
    return stack[0]


def current(http: Http, code: str) -> int:
    return http.get(f"/api/stats/{code}").json["current_packet"]


def test_stop_pauses_and_rewinds_and_resume_plays_from_the_start(http):
    create(http, "orig-stop", speed=20)
    wait_for(lambda: current(http, "orig-stop") > 50, 10, "orig-stop to play past packet 50")
    reply = http.post("/api/control/orig-stop/stop")
    assert reply.status == 200, reply.body
    doc = reply.json
    assert (doc["status"], doc["session_code"]) == ("stopped", "orig-stop")
    assert doc["session"]["is_running"] is False and doc["session"]["current_packet"] == 0
    assert current(http, "orig-stop") == 0
    assert http.post("/api/control/orig-stop/resume").status == 200
    wait_for(lambda: current(http, "orig-stop") > 0, 5, "playback to go on from the start")
    assert http.post("/api/control/nobody-here/stop").status == 404


def test_position_reports_packet_seconds_and_progress(http):
    create(http, "orig-pos", paused=True)
    assert http.post("/api/control/orig-pos/seek", {"packet_id": 400}).status == 200
    reply = http.get("/api/control/orig-pos/position")
    assert reply.status == 200, reply.body
    doc = reply.json
    assert doc["session_code"] == "orig-pos" and doc["current_packet"] == 400
    assert doc["position_seconds"] == pytest.approx(400 * 0.025)
    assert doc["progress"] == pytest.approx(400 / doc["total_packets"])
    assert doc["is_running"] is False
    assert http.get("/api/control/nobody-here/position").status == 404
    assert http.get("/api/control/Bad_Code/position").status == 404   # as every route treats a bad code


def test_session_list_carries_the_original_stats_object(http):
    create(http, "orig-stats-a")
    create(http, "orig-stats-b", paused=True)
    doc = http.get("/api/sessions").json
    stats = doc["stats"]
    assert stats["total_sessions"] == doc["total_sessions"] == len(doc["sessions"])
    playing = sum(1 for s in doc["sessions"].values() if s["is_running"])
    streaming = sum(1 for s in doc["sessions"].values() if s["is_running"] and s["active_connections"])
    assert stats["running_sessions"] == playing > streaming == stats["active_sessions"]
    assert stats["total_connections"] == sum(s["active_connections"] for s in doc["sessions"].values())
    assert stats["max_sessions"] == 1000 and stats["session_ttl_seconds"] == 3600
    assert http.get("/api/stats").json["session_manager"]["total_sessions"] == stats["total_sessions"]


def test_trial_records_carry_active_target_and_target_pos(http):
    listed = http.get("/api/trials").json["trials"]
    one = http.get("/api/trials/5").json
    by_target = http.get("/api/trials/by-target/1").json["trials"]
    for t in (*listed[:10], one, *by_target[:3]):
        assert t["active_target"] == t["target_id"]
        assert t["target_pos"] == [t["target_x"], t["target_y"]]
        assert all(isinstance(v, float) for v in t["target_pos"])
    assert {t["active_target"] for t in by_target} == {1}
