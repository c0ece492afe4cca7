"""Property-based tests (hypothesis) of the wire parsers, the access rules and control's REST bodies.

The parsers must turn any input into either a value or their one documented error, never another
exception; control must answer any body with a JSON error or success, never a 5xx other than 503.
"""
from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.ws.client import frame, has_close_frame
from protocol import (CommandError, ProtocolError, decode, parse_reply, parse_request,
                      session_of_subscription, split_topic, validate_code)
from protocol import access
from protocol.commands import COMMANDS
from protocol.config import load_config
from protocol.wire import CODE_MAX_LEN, SESSION_PREFIX

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
wire_values = st.recursive(   # what msgpack can encode
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
codes = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@PROFILE
@given(st.binary(max_size=200))
def test_decode_returns_a_value_or_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@PROFILE
@given(st.binary(max_size=120))
def test_split_topic_and_subscription_parsing_never_misname_a_session(topic):
    code = session_of_subscription(topic)
    if code is not None:
        assert validate_code(code) == code
        assert topic.startswith(SESSION_PREFIX + code.encode() + b"/")
    try:
        code2, kind = split_topic(topic)
    except ProtocolError:
        return
    assert topic == SESSION_PREFIX + code2.encode() + b"/" + kind.encode()


@PROFILE
@given(codes, st.sampled_from([b"", b"p", b"packet", b"m", b"meta"]))
def test_every_valid_session_prefix_names_its_session(code, kind):
    assert session_of_subscription(SESSION_PREFIX + code.encode() + b"/" + kind) == code


@PROFILE
@given(st.text(max_size=CODE_MAX_LEN + 5))
def test_validate_code_accepts_exactly_the_documented_codes(text):
    import re
    ok = bool(re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", text)) and len(text) <= CODE_MAX_LEN
    try:
        assert validate_code(text) == text and ok
    except ProtocolError:
        assert not ok


requests = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda v, cmd, args: msgpack.packb({"v": v, "cmd": cmd, "args": args}),
              st.sampled_from([1, 2, "1", None]), st.sampled_from(sorted(COMMANDS)) | st.text(max_size=8),
              st.dictionaries(st.sampled_from(["code", "speed", "packet_id", "loop", "noise", "x"]),
                              wire_values, max_size=4) | wire_values))


@PROFILE
@given(requests)
def test_parse_request_returns_checked_args_or_a_command_error(frame_bytes):
    try:
        command, args = parse_request(frame_bytes)
    except CommandError:
        return
    assert set(args) <= set(command.args)


@PROFILE
@given(st.binary(max_size=100) | st.builds(msgpack.packb, wire_values))
def test_parse_reply_returns_a_result_or_a_command_error(reply):
    try:
        parse_reply(reply)
    except CommandError:
        pass


@PROFILE
@given(st.lists(st.tuples(st.sampled_from([0x1, 0x2, 0x9, 0xA, 0x8]), st.binary(max_size=300)),
                min_size=1, max_size=5))
def test_a_close_frame_is_found_in_any_run_of_server_frames(frames):
    data = b"".join(frame(op, payload) for op, payload in frames)
    assert has_close_frame(data) == any(op == 0x8 for op, _ in frames)


CONFIG = load_config({"PHANTOM_ALLOWED_ORIGINS": "https://lab.example.org",
                      "PHANTOM_AUTH_TOKEN": "a-token-for-property-tests"})


@PROFILE
@given(st.text(max_size=60))
def test_host_and_origin_rules_never_raise_and_foreign_names_are_refused(text):
    allowed = access.host_allowed(CONFIG, text, "127.0.0.1")
    name = access.host_name(text)
    if allowed:
        assert access.is_loopback_host(name)
    origin_ok = access.origin_allowed(CONFIG, text, "localhost:8000")
    if origin_ok and text.strip().lower().rstrip("/") != "https://lab.example.org":
        from urllib.parse import urlsplit
        assert access.is_loopback_host(urlsplit(text.strip().lower()).hostname or "")


@PROFILE
@given(st.text(max_size=40))
def test_only_the_exact_token_opens(text):
    assert access.token_ok(CONFIG, text) == (text == "a-token-for-property-tests")


# -- control's REST bodies, through the real app and a real broker --------------------------------
@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    from control import create_app
    from processes import Proc, base_env

    tmp = tmp_path_factory.mktemp("props")
    broker = Proc.module("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                            PHANTOM_STATE_PATH=str(tmp / "state.json")))
    try:
        broker.wait_ready(60)
        app = create_app(load_config({}, control_endpoint=broker.ready["control"]))
        client = app.test_client()
        assert client.post("/api/sessions/create", json={"custom_code": "prop-target"}).status_code == 200
        yield client
        app.extensions["phantomlink"]["broker"].close()
    finally:
        broker.stop()


ROUTES = ["/api/sessions/create", "/api/control/prop-target/seek", "/api/control/prop-target/speed",
          "/api/control/prop-target/loop", "/api/control/prop-target/filter",
          "/api/control/prop-target/noise", "/api/control/prop-target/pause", "/api/sessions/cleanup"]
bodies = st.one_of(st.binary(max_size=80), st.builds(lambda v: json.dumps(v).encode(), json_values),
                   st.builds(lambda d: json.dumps(d).encode(),
                             st.dictionaries(st.sampled_from(["custom_code", "speed", "packet_id",
                                                              "loop", "noise", "filter", "target_id",
                                                              "trial_id", "paused", "position_seconds"]),
                                             json_values, max_size=3)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ROUTES), bodies,
       st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]))
def test_any_body_gets_a_json_answer_and_never_a_5xx(app_client, route, body, content_type):
    reply = app_client.post(route, data=body, headers={"Content-Type": content_type} if content_type else {})
    assert reply.status_code < 500 or reply.status_code == 503, (route, body, reply.data)
    assert reply.is_json, reply.data
    if reply.status_code >= 400:
        assert set(reply.json["error"]) == {"code", "message"}
    if not content_type.startswith("application/json") and body:
        assert reply.status_code == 415
