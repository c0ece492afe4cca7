"""Control's access rules against a real broker and real control processes: token, 415, Host, Origin, CORS."""
from __future__ import annotations

import pytest

from control_support import Http, start_control
from processes import Proc, base_env

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    """One broker; control without a token (``open``) and with one (``locked``, CORS for one origin)."""
    tmp = tmp_path_factory.mktemp("security")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    procs: list[Proc] = []

    def spawn(module: str, env: dict[str, str]) -> Proc:
        proc = Proc.module(module, env)
        procs.append(proc)
        return proc

    try:
        broker = spawn("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_STATE_PATH=str(tmp / "state.json")))
        broker.wait_ready(timeout=60)
        _, open_http = start_control(spawn, broker.ready["control"],
                                     PHANTOM_ALLOWED_HOSTS="replay.example")
        locked_proc, locked = start_control(spawn, broker.ready["control"],
                                            PHANTOM_AUTH_TOKEN_FILE=str(token_file),
                                            PHANTOM_CORS_ORIGINS="https://app.example.org")
        yield open_http, locked, locked_proc
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_every_route_but_health_and_pages_needs_the_token(controls):
    _, locked, proc = controls
    for method, path in [("GET", "/api/sessions"), ("POST", "/api/sessions/create"),
                         ("GET", "/metrics"), ("GET", "/metrics/prometheus"), ("GET", "/api/trials"),
                         ("DELETE", "/api/sessions/anything"), ("POST", "/api/control/x/pause"),
                         ("GET", "/"), ("GET", "/api/stats")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            reply = locked.request(method, path, headers=headers)
            assert reply.status == 401, (method, path, headers, reply.status)
            assert reply.error_code() == "unauthorized"
            assert reply.headers["www-authenticate"].startswith("Bearer")
    assert locked.get("/health").status == 200
    assert locked.get("/docs").status == 200
    assert locked.get("/openapi.json").status == 200
    assert TOKEN not in proc.output()


def test_the_right_token_opens_every_route(controls):
    _, locked, _ = controls
    created = locked.post("/api/sessions/create", {"custom_code": "sec-token"}, headers=AUTH)
    assert created.status == 200, created.body
    assert locked.post("/api/control/sec-token/pause", headers=AUTH).status == 200
    assert locked.get("/api/sessions/sec-token", headers=AUTH).json["state"] == "paused"
    assert locked.get("/metrics", headers={**AUTH, "Accept": "text/plain"}).status == 200
    assert locked.delete("/api/sessions/sec-token", headers=AUTH).status == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_body_that_is_not_declared_json_is_415_and_changes_nothing(controls, content_type):
    http, _, _ = controls
    assert http.post("/api/sessions/create", {"custom_code": "sec-415"}).status == 200
    headers = {"Content-Type": content_type} if content_type else {}
    for path, body in [("/api/control/sec-415/seek", b'{"packet_id": 500}'),
                       ("/api/control/sec-415/speed", b'{"speed": 7}'),
                       ("/api/sessions/create", b'{"custom_code": "sec-415-b"}')]:
        conn_headers = dict(headers)
        if content_type is None:
            conn_headers["Content-Type"] = ""     # http.client would otherwise send none; same thing
        reply = http.request("POST", path, raw=body, headers=conn_headers)
        assert reply.status == 415, (path, content_type, reply.status, reply.body)
        assert reply.error_code() == "unsupported_media_type"
    session = http.get("/api/sessions/sec-415").json
    assert session["speed"] == 1 and session["current_packet"] < 500
    assert http.get("/api/sessions/sec-415-b").status == 404
    charset = http.request("POST", "/api/control/sec-415/speed", raw=b'{"speed": 3}',
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status == 200
    assert http.post("/api/control/sec-415/pause").status == 200   # no body: no header needed
    http.delete("/api/sessions/sec-415")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "localhost.evil.example"])
def test_a_foreign_host_header_is_refused_while_bound_to_loopback(controls, host):
    http, _, _ = controls
    reply = http.get("/api/sessions", headers={"Host": host})
    assert reply.status == 403 and reply.error_code() == "forbidden"
    assert http.post("/api/sessions/create", {"custom_code": "sec-host"},
                     headers={"Host": host}).status == 403
    assert http.get("/api/sessions/sec-host").status == 404


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:80",
                                  "app.localhost", "replay.example", "replay.example:443"])
def test_loopback_names_and_allowed_hosts_are_served(controls, host):
    http, _, _ = controls
    assert http.get("/api/sessions", headers={"Host": host}).status == 200


def test_a_cross_site_form_post_cannot_change_a_session(controls):
    http, _, _ = controls
    assert http.post("/api/sessions/create", {"custom_code": "sec-origin"}).status == 200
    evil = {"Origin": "https://evil.example"}
    assert http.post("/api/control/sec-origin/pause", headers=evil).status == 403
    assert http.delete("/api/sessions/sec-origin", headers=evil).status == 403
    assert http.get("/api/sessions/sec-origin").json["state"] == "playing"
    for origin in ("http://localhost:5173", "http://127.0.0.1:8000", "http://replay.example"):
        headers = {"Origin": origin}
        if origin.endswith("replay.example"):
            headers["Host"] = "replay.example"
        assert http.post("/api/control/sec-origin/pause", headers=headers).status == 200, origin
    http.delete("/api/sessions/sec-origin")


def test_cors_is_off_by_default_and_answers_only_configured_origins(controls):
    http, locked, _ = controls
    plain = http.get("/api/sessions", headers={"Origin": "https://app.example.org"})
    assert "access-control-allow-origin" not in plain.headers
    preflight = locked.request("OPTIONS", "/api/sessions/create", headers={
        "Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    other = locked.request("OPTIONS", "/api/sessions/create", headers={
        "Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    allowed = locked.post("/api/sessions/create", {"custom_code": "sec-cors"},
                          headers={**AUTH, "Origin": "https://app.example.org"})
    assert allowed.status == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    locked.delete("/api/sessions/sec-cors", headers=AUTH)


def test_bad_token_settings_stop_control_with_one_line(spawn, tmp_path):
    for env, needle in [({"PHANTOM_AUTH_TOKEN": "short"}, "at least 16"),
                        ({"PHANTOM_AUTH_TOKEN_FILE": str(tmp_path / "missing")}, "cannot read"),
                        ({"PHANTOM_AUTH_TOKEN": TOKEN, "PHANTOM_AUTH_TOKEN_FILE": str(tmp_path)}, "not both")]:
        proc = spawn("control", base_env(PHANTOM_CONTROL_PORT="0", **env))
        assert proc.popen.wait(30) == 2
        assert needle in proc.output() and TOKEN not in proc.output() and "short" not in proc.output()
