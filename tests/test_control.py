"""The REST API end to end: real `python -m broker` and `python -m control` processes on 127.0.0.1,
every route's success path, its documented errors and the original PhantomLink's JSON shapes."""
from __future__ import annotations

import http.client as http_client
import re
import time
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processes import wait_for
from control_support import Http, create, stack, start_control  # noqa: F401  (module fixture)

CODE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
ORIGINAL_SESSION_FIELDS = {"created_at", "last_accessed", "active_connections", "is_running",
                           "current_packet"}
ORIGINAL_STATS_FIELDS = {"session_code", "is_running", "current_packet", "total_packets",
                         "elapsed_seconds", "active_connections"}


@pytest.fixture
def http(stack) -> Http:
    return stack[0]


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def assert_recent(text: str, within_s: float = 60.0) -> None:
    age = (datetime.now(timezone.utc) - parse_iso(text)).total_seconds()
    assert -5 < age < within_s, text


# -- health ---------------------------------------------------------------------------------------

def test_health_reports_control_and_broker(http):
    reply = http.get("/health")
    assert reply.status == 200
    doc = reply.json
    assert doc["status"] == "healthy"
    assert doc["version"] and doc["version"] != "unknown"
    assert_recent(doc["timestamp"])
    assert doc["broker"]["reachable"] is True
    assert 0 < doc["broker"]["latency_ms"] < 500          # the ping's budget


# -- sessions -------------------------------------------------------------------------------------

def test_create_without_body_generates_a_code_and_stream_url(http):
    reply = http.post("/api/sessions/create")
    assert reply.status == 200, reply.body
    doc = reply.json
    code = doc["session_code"]
    assert CODE_RE.match(code)
    assert doc["stream_url"] == f"ws://replay.example:8123/stream/{code}"
    assert_recent(doc["created_at"])
    assert doc["session"]["is_running"] is True


def test_create_with_custom_code_and_options(http):
    doc = create(http, "ctl-opts", speed=2.5, loop=False, paused=True, filter={"target_id": 0},
                 noise="moderate")
    assert doc["session_code"] == "ctl-opts"
    session = doc["session"]
    assert session["speed"] == 2.5
    assert session["loop"] is False
    assert session["is_running"] is False and session["state"] == "paused"
    assert session["filter"] == {"target_id": 0}
    assert session["noise"]["preset"] == "moderate"
    assert session["playlist_packets"] < session["total_packets"]


@pytest.mark.parametrize("body, status, code", [
    ({"custom_code": "Bad Code"}, 400, "bad_request"),
    ({"custom_code": "-dash"}, 400, "bad_request"),
    ({"custom_code": "x" * 65}, 400, "bad_request"),
    ({"custom_code": 42}, 400, "bad_request"),
    ({"speed": "fast"}, 400, "bad_request"),
    ({"loop": "yes"}, 400, "bad_request"),
    ({"paused": 1}, 400, "bad_request"),
    ({"filter": [0]}, 400, "bad_request"),
    ({"filter": {"target_id": "0"}}, 400, "bad_request"),
    ({"filter": {"target_id": 0, "trial_id": 1}}, 400, "bad_request"),
    ({"filter": {"colour": 1}}, 400, "bad_request"),
    ({"noise": 3}, 400, "bad_request"),
    ({"noise": "deafening"}, 400, "bad_request"),
    ({"surprise": True}, 400, "bad_request"),
    ({"speed": 0}, 422, "out_of_range"),
    ({"speed": 1e9}, 422, "out_of_range"),
    ({"filter": {"trial_id": 10 ** 9}}, 404, "not_found"),
])
def test_create_rejects_bad_bodies(http, body, status, code):
    reply = http.post("/api/sessions/create", body)
    assert reply.status == status, reply.body
    assert reply.error_code() == code


def test_create_rejects_non_object_and_malformed_json(http):
    for raw in (b"[]", b"42", b'"code"', b"{", b"\xff\xfe", b'{"speed": NaN}'):
        reply = http.post("/api/sessions/create", raw=raw)
        assert reply.status == 400, (raw, reply.body)
        assert reply.error_code() == "bad_request"


def test_create_accepts_the_original_query_parameter(http):
    reply = http.post("/api/sessions/create?custom_code=ctl-query")
    assert reply.status == 200 and reply.json["session_code"] == "ctl-query"


def test_create_taken_code_is_a_conflict(http):
    create(http, "ctl-taken")
    reply = http.post("/api/sessions/create", {"custom_code": "ctl-taken"})
    assert reply.status == 409
    assert reply.error_code() == "conflict"


def test_list_has_the_original_shape(http):
    create(http, "ctl-list")
    doc = http.get("/api/sessions").json
    assert set(doc) >= {"sessions", "total_sessions"}
    assert doc["total_sessions"] == len(doc["sessions"])
    entry = doc["sessions"]["ctl-list"]
    assert ORIGINAL_SESSION_FIELDS <= set(entry)
    assert_recent(entry["created_at"])
    assert_recent(entry["last_accessed"])
    assert entry["active_connections"] == 0                # nobody subscribes to it
    assert entry["is_running"] is True and entry["state"] == "playing"
    assert 0 <= entry["current_packet"] < entry["total_packets"]


def test_get_and_delete_one_session(http):
    create(http, "ctl-get")
    doc = http.get("/api/sessions/ctl-get").json
    assert doc["session_code"] == "ctl-get"
    assert ORIGINAL_SESSION_FIELDS <= set(doc)
    reply = http.delete("/api/sessions/ctl-get")
    assert reply.status == 200
    assert reply.json["deleted"] is True
    assert http.get("/api/sessions/ctl-get").error_code() == "not_found"
    again = http.delete("/api/sessions/ctl-get")
    assert again.status == 404 and again.error_code() == "not_found"
    assert "ctl-get" not in http.get("/api/sessions").json["sessions"]


@pytest.mark.parametrize("path", ["/api/sessions/NOPE", "/api/sessions/a_b",
                                  "/api/sessions/" + "x" * 65, "/api/sessions/no-such-session",
                                  "/api/stats/no-such-session", "/api/stats/UPPER"])
def test_unknown_or_invalid_codes_are_not_found(http, path):
    reply = http.get(path)
    assert reply.status == 404
    assert reply.error_code() == "not_found"


def test_cleanup_answers_the_original_shape(http):
    reply = http.post("/api/sessions/cleanup")
    assert reply.status == 200
    doc = reply.json
    assert doc["cleaned_up"] == len(doc["removed"]) == 0    # nothing is older than the 1 h TTL
    assert http.post("/api/sessions/cleanup", {"x": 1}).status == 400


# -- playback control -----------------------------------------------------------------------------

def test_pause_resume_and_stats(http):
    create(http, "ctl-play")
    paused = http.post("/api/control/ctl-play/pause")
    assert paused.status == 200
    assert paused.json["status"] == "paused" and paused.json["session_code"] == "ctl-play"
    stats = http.get("/api/stats/ctl-play").json
    assert ORIGINAL_STATS_FIELDS <= set(stats)
    assert stats["is_running"] is False
    assert http.get("/api/stats/ctl-play").json["current_packet"] == stats["current_packet"]
    resumed = http.post("/api/control/ctl-play/resume")
    assert resumed.status == 200 and resumed.json["status"] == "resumed"
    assert resumed.json["session"]["is_running"] is True
    wait_for(lambda: http.get("/api/stats/ctl-play").json["current_packet"]
             > stats["current_packet"] + 2, 5, "playback to advance after resume")
    total = stats["total_packets"]
    assert stats["elapsed_seconds"] == pytest.approx(stats["current_packet"] * 0.025, abs=1e-6)
    assert total > 0


def test_seek_moves_the_cursor(http):
    create(http, "ctl-seek", paused=True)
    reply = http.post("/api/control/ctl-seek/seek", {"packet_id": 1000})
    assert reply.status == 200, reply.body
    assert reply.json["status"] == "seeked"
    assert reply.json["session"]["current_packet"] == 1000
    assert http.get("/api/stats/ctl-seek").json["current_packet"] == 1000
    total = reply.json["session"]["total_packets"]
    past = http.post("/api/control/ctl-seek/seek", {"packet_id": total + 5})
    assert past.status == 422 and past.error_code() == "out_of_range"
    by_time = http.post("/api/control/ctl-seek/seek", {"position_seconds": 12.51})
    assert by_time.status == 200 and by_time.json["session"]["current_packet"] == 500
    edge = http.post("/api/control/ctl-seek/seek", {"position_seconds": 8.075}).json
    assert (edge["session"]["current_packet"], edge["packet_id"], edge["position_seconds"]) == (323, 323, 8.075)
    query = http.post("/api/control/ctl-seek/seek?position_seconds=2.5")  # the original's form
    assert query.status == 200 and query.json["session"]["current_packet"] == 100
    assert http.post("/api/control/ctl-seek/seek?position_seconds=x").status == 400
    assert http.post("/api/control/ctl-seek/seek", {"position_seconds": -1}).status == 422
    for bad in ({"packet_id": "10"}, {"packet_id": 1.5}, {"packet_id": True}, {}, {"position": 3},
                {"packet_id": 1, "position_seconds": 1.0}, {"position_seconds": "1"}):
        reply = http.post("/api/control/ctl-seek/seek", bad)
        assert reply.status == 400 and reply.error_code() == "bad_request", bad


def test_perturbations_set_read_clear(http):
    """"Dropout of 20 % of units from minute 2, ramping over 30 s" is one request."""
    create(http, "ctl-pert", paused=True)
    body = {"seed": 7, "items": [{"kind": "dropout", "id": "drop20", "fraction": 0.2,
                                   "start_s": 120, "ramp_s": 30}]}
    reply = http.post("/api/control/ctl-pert/perturbations", body)
    assert reply.status == 200, reply.body
    item = reply.json["items"][0]
    assert reply.json["seed"] == 7 and item["id"] == "drop20" and item["fraction"] == 0.2
    assert item["start_packet"] == 4800 and item["ramp_packets"] == 1200 and item["mode"] == "silence"
    assert http.get("/api/control/ctl-pert/perturbations").json["items"] == reply.json["items"]
    assert http.get("/api/sessions/ctl-pert").status == 200
    http.post("/api/control/ctl-pert/seek", {"packet_id": 7000})
    assert http.get("/api/control/ctl-pert/perturbations").json["active"] == ["drop20"]
    cleared = http.delete("/api/control/ctl-pert/perturbations")
    assert cleared.status == 200 and cleared.json["items"] == [] and cleared.json["active"] == []
    for bad, code in (({"items": [{"kind": "quake"}]}, "bad_request"),
                      ({"items": [{"kind": "dropout", "fraction": 2}]}, "out_of_range"),
                      ({"items": [{"kind": "gain", "start_s": 5, "end_s": 1}]}, "out_of_range"),
                      ({"items": [{"kind": "drop", "start_s": 1, "start_packet": 3}]}, "bad_request"),
                      ({"items": "drop"}, "bad_request"), ({}, "bad_request"),
                      ({"items": [], "colour": 1}, "bad_request")):
        assert http.post("/api/control/ctl-pert/perturbations", bad).error_code() == code, bad
    assert http.get("/api/control/no-such/perturbations").status == 404
    kinds = http.get("/api/perturbations/kinds").json["kinds"]
    assert kinds["nonstationarity"]["presets"]["perge2013"]["fraction"] == 0.84
    made = http.post("/api/sessions/create", {"custom_code": "ctl-pert2", "perturbations": [
        {"kind": "noise", "preset": "moderate"}]})
    assert made.status == 200, made.body
    assert http.get("/api/control/ctl-pert2/perturbations").json["active"] == ["noise-0"]


def test_speed_loop_filter_and_noise(http):
    create(http, "ctl-set", paused=True)
    assert http.post("/api/control/ctl-set/speed", {"speed": 4}).json["session"]["speed"] == 4
    assert http.post("/api/control/ctl-set/speed", {"speed": 0}).error_code() == "out_of_range"
    assert http.post("/api/control/ctl-set/speed", {"speed": "4"}).error_code() == "bad_request"
    assert http.post("/api/control/ctl-set/loop", {"loop": False}).json["session"]["loop"] is False
    assert http.post("/api/control/ctl-set/loop", {"loop": 0}).error_code() == "bad_request"

    target = http.post("/api/control/ctl-set/filter", {"target_id": 0}).json["session"]
    assert target["filter"] == {"target_id": 0}
    trial = http.post("/api/control/ctl-set/filter", {"trial_id": 3}).json["session"]
    assert trial["filter"] == {"trial_id": 3}
    assert trial["playlist_packets"] < target["playlist_packets"]
    cleared = http.post("/api/control/ctl-set/filter", {}).json
    assert cleared["status"] == "filter_cleared"
    assert cleared["session"]["filter"] is None
    assert cleared["session"]["playlist_packets"] == cleared["session"]["total_packets"]
    assert http.post("/api/control/ctl-set/filter", {"trial_id": 10 ** 9}).status == 404
    both = http.post("/api/control/ctl-set/filter", {"target_id": 0, "trial_id": 3})
    assert both.error_code() == "bad_request"

    preset = http.post("/api/control/ctl-set/noise", {"noise": "intense"}).json["session"]["noise"]
    assert preset["preset"] == "intense"
    params = http.post("/api/control/ctl-set/noise",
                       {"noise": {"noise_std": 0.7, "enable_drift": False}}).json["session"]["noise"]
    assert params["noise_std"] == 0.7
    for off in (None, False, "off"):
        reply = http.post("/api/control/ctl-set/noise", {"noise": off})
        assert reply.status == 200 and reply.json["session"]["noise"] is None, off
    assert http.post("/api/control/ctl-set/noise", {}).error_code() == "bad_request"
    assert http.post("/api/control/ctl-set/noise", {"noise": "loud"}).error_code() == "bad_request"
    out = http.post("/api/control/ctl-set/noise", {"noise": {"noise_std": -1}})
    assert out.status == 422 and out.error_code() == "out_of_range"


@pytest.mark.parametrize("action, body", [
    ("pause", None), ("resume", None), ("seek", {"packet_id": 0}), ("speed", {"speed": 1}),
    ("loop", {"loop": True}), ("filter", {}), ("noise", {"noise": None}),
    ("lsl", {"enabled": True}),
])
def test_control_of_an_unknown_session_is_not_found(http, action, body):
    reply = http.post(f"/api/control/no-such-session/{action}", body)
    assert reply.status == 404 and reply.error_code() == "not_found"


# -- trials and metadata --------------------------------------------------------------------------

def test_trials_all_by_target_and_one(http):
    doc = http.get("/api/trials").json
    trials = doc["trials"]
    assert doc["total_trials"] == len(trials) > 0
    first = trials[0]
    assert {"trial_id", "start_time", "stop_time", "target_x", "target_y", "target_id"} <= set(first)
    target = first["target_id"]
    by_target = http.get(f"/api/trials/by-target/{target}").json
    assert by_target["total_trials"] == len(by_target["trials"]) > 0
    assert all(t["target_id"] == target for t in by_target["trials"])
    assert {t["trial_id"] for t in by_target["trials"]} == {
        t["trial_id"] for t in trials if t["target_id"] == target}
    one = http.get(f"/api/trials/{first['trial_id']}").json
    assert one == first


@pytest.mark.parametrize("path", ["/api/trials/999999", "/api/trials/99999999999999999999999",
                                  "/api/trials/-1", "/api/trials/abc",
                                  "/api/trials/by-target/9999", "/api/trials/by-target/x"])
def test_unknown_trials_are_not_found(http, path):
    reply = http.get(path)
    assert reply.status == 404 and reply.error_code() == "not_found"


def test_metadata(http):
    doc = http.get("/api/metadata").json
    assert doc["num_channels"] > 0 and doc["total_packets"] > 0 and doc["bin_size_ms"] == 25


def test_overall_stats(http):
    create(http, "ctl-overall")
    create(http, "ctl-overall-paused", paused=True)
    listed = http.get("/api/sessions").json["sessions"]
    doc = http.get("/api/stats").json
    manager = doc["session_manager"]
    assert manager["total_sessions"] == len(listed)
    assert manager["running_sessions"] == sum(s["is_running"] for s in listed.values())
    assert manager["running_sessions"] < manager["total_sessions"]      # the paused one
    assert doc["active_connections"] == manager["total_connections"] == sum(
        s["active_connections"] for s in listed.values())


def test_active_sessions_means_streaming_in_every_endpoint(http):
    """A session playing with nobody subscribed is running, not active (streaming)."""
    create(http, "ctl-active-idle")
    metrics = http.get("/metrics").json["metrics"]
    stats = http.get("/api/stats").json["session_manager"]
    prom = check_prometheus(http.get("/metrics/prometheus").body.decode())
    streaming = sum(1 for m in metrics["sessions"].values() if m["is_running"] and m["connections"])
    assert metrics["active_sessions"] == stats["active_sessions"] == streaming
    assert prom["phantomlink_active_sessions"] == streaming
    assert metrics["sessions"]["ctl-active-idle"]["is_running"] is True
    assert stats["running_sessions"] > stats["active_sessions"]


def test_lsl_flag_defaults_on_and_its_route_switches_it(http):
    assert create(http, "ctl-lsl")["session"]["lsl"] is True
    assert create(http, "ctl-lsl-off", lsl=False)["session"]["lsl"] is False
    off = http.post("/api/control/ctl-lsl/lsl", {"enabled": False})
    assert off.status == 200, off.body
    assert off.json["status"] == "lsl_off" and off.json["session"]["lsl"] is False
    assert http.get("/api/sessions/ctl-lsl").json["lsl"] is False
    on = http.post("/api/control/ctl-lsl/lsl", {"enabled": True}).json
    assert on["status"] == "lsl_on" and on["session"]["lsl"] is True
    for bad in ({}, {"enabled": 1}, {"enabled": "yes"}, {"enabled": True, "x": 1}):
        reply = http.post("/api/control/ctl-lsl/lsl", bad)
        assert reply.status == 400 and reply.error_code() == "bad_request", bad
    assert http.post("/api/sessions/create", {"lsl": "auto"}).error_code() == "bad_request"


def test_lsl_default_is_on_only_while_under_the_bound(start_broker, spawn):
    broker = start_broker(PHANTOM_LSL_MAX_SESSIONS="2")
    _, http = start_control(spawn, broker.ready["control"])
    flags = [create(http, f"ctl-bound-{i}")["session"]["lsl"] for i in range(3)]
    assert flags == [True, True, False]
    assert create(http, "ctl-bound-forced", lsl=True)["session"]["lsl"] is True


# -- metrics --------------------------------------------------------------------------------------

def test_metrics_json_has_the_original_shape(http):
    create(http, "ctl-metrics")
    doc = http.get("/metrics").json
    assert doc["service"] == "PhantomLink Core"
    assert time.time() - 60 < doc["timestamp"] <= time.time() + 5
    metrics = doc["metrics"]
    assert {"total_sessions", "active_sessions", "total_connections", "sessions"} <= set(metrics)
    entry = metrics["sessions"]["ctl-metrics"]
    assert {"packets_sent", "dropped_packets", "network_latency_ms", "timing_error_ms",
            "memory_usage_mb", "is_running", "is_paused", "connections"} <= set(entry)
    for stat in ("network_latency_ms", "timing_error_ms"):
        assert {"mean", "std", "max"} <= set(entry[stat])


PROM_LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$')


def check_prometheus(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        assert PROM_LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_in_prometheus_text(http):
    create(http, "ctl-prom")
    for path, headers in (("/metrics", {"Accept": "text/plain"}),
                          ("/metrics", {"Accept": "application/openmetrics-text;q=0.5,text/plain;"
                                                  "version=0.0.4;q=0.4,*/*;q=0.1"}),
                          ("/metrics/prometheus", {})):
        reply = http.get(path, headers=headers)
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain"), path
        samples = check_prometheus(reply.body.decode())
        assert samples["phantomlink_total_sessions"] >= 1
        assert 'phantomlink_session_packets_sent_total{session="ctl-prom"}' in samples
    assert http.get("/metrics", headers={"Accept": "*/*"}).headers["content-type"].startswith(
        "application/json")


def families(http) -> dict:
    """/metrics/prometheus parsed by prometheus_client's own parser: name -> family."""
    reply = http.get("/metrics/prometheus")
    assert reply.status == 200
    return {f.name: f for f in text_string_to_metric_families(reply.body.decode())}


def histogram(family, **labels) -> dict:
    """One labelled histogram's buckets (le -> cumulative count), count and sum."""
    out: dict = {"buckets": {}}
    for sample in family.samples:
        own = {k: v for k, v in sample.labels.items() if k != "le"}
        if own != labels:
            continue
        if sample.name.endswith("_bucket"):
            out["buckets"][float(sample.labels["le"])] = sample.value
        else:
            out[sample.name.rsplit("_", 1)[1]] = sample.value
    return out


def test_rest_duration_histogram_counts_every_request(http):
    create(http, "ctl-hist")
    labels = {"method": "GET", "route": "/api/stats/<code>", "status": "200"}
    before = histogram(families(http)["phantomlink_http_request_duration_seconds"], **labels)
    for _ in range(7):
        assert http.get("/api/stats/ctl-hist").status == 200
    assert http.get("/api/stats/no-such-session").status == 404
    fams = families(http)
    after = histogram(fams["phantomlink_http_request_duration_seconds"], **labels)
    assert fams["phantomlink_http_request_duration_seconds"].type == "histogram"
    assert after["count"] - before.get("count", 0) == 7
    assert after["sum"] > before.get("sum", 0)
    bounds = sorted(after["buckets"])
    counts = [after["buckets"][b] for b in bounds]
    assert counts == sorted(counts) and bounds[-1] == float("inf") and counts[-1] == after["count"]
    assert len([b for b in bounds if b <= 0.001]) >= 4  # the buckets resolve sub-ms requests
    missing = histogram(fams["phantomlink_http_request_duration_seconds"], method="GET",
                        route="/api/stats/<code>", status="404")
    assert missing["count"] >= 1
    get_cmds = histogram(fams["phantomlink_broker_command_duration_seconds"], command="get",
                         outcome="ok")
    assert get_cmds["count"] >= 7


# -- HTTP-level errors ----------------------------------------------------------------------------

def test_unknown_routes_wrong_methods_and_huge_bodies(http):
    missing = http.get("/api/nothing-here")
    assert missing.status == 404 and missing.error_code() == "not_found"
    wrong = http.request("PUT", "/api/sessions")
    assert wrong.status == 405 and wrong.error_code() == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]
    get_create = http.request("PATCH", "/api/sessions/create")
    assert get_create.status == 405
    huge = http.post("/api/sessions/create", raw=b'{"custom_code": "' + b"a" * 200_000 + b'"}')
    assert huge.status == 413 and huge.error_code() == "too_large"
    assert "65536" in huge.json["error"]["message"]
    # Chunked bodies carry no Content-Length: the limit still holds while reading.
    conn = http_client.HTTPConnection(http.host, http.port, timeout=10)
    try:
        conn.request("POST", "/api/sessions/create", body=iter([b"a" * 1000] * 100),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        chunked = conn.getresponse()
        assert chunked.status == 413 and b"too_large" in chunked.read()
    finally:
        conn.close()


def test_openapi_and_docs_are_served(http):
    spec = http.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert "/api/control/{code}/seek" in spec["paths"]
    page = http.get("/docs")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assert "SwaggerUIBundle(" in html and '"/openapi.json"' in html
    # Offline: every script and stylesheet comes from control itself, and each one is there.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3 and all(a.startswith("/docs/swagger/") for a in assets), assets
    for asset in assets:
        reply = http.get(asset)
        assert reply.status == 200 and len(reply.body) > 1000, asset
    assert http.get("/").json["docs"] == "/docs"
