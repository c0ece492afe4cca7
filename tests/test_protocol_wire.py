"""protocol.wire: session codes, topics and which subscriptions name a session."""
from __future__ import annotations

import pytest

from protocol import CommandError, ErrorCode, encode, encode_request, parse_reply, parse_request
from protocol.wire import (ProtocolError, decode, session_of_subscription, session_topic, split_topic,
                           validate_code)


@pytest.mark.parametrize("code", ["a", "abc", "swift-neural-42", "0", "a-b", "x" * 64])
def test_valid_codes(code):
    assert validate_code(code) == code


@pytest.mark.parametrize("code", ["", "A", "-a", "a-", "a_b", "a b", "x" * 65, "é", 5, None])
def test_invalid_codes(code):
    with pytest.raises(ProtocolError):
        validate_code(code)


def test_topics_never_match_a_longer_code():
    assert session_topic("abc") == b"session/abc/"
    assert not session_topic("abcd", "packet").startswith(session_topic("abc"))
    assert split_topic(b"session/abc/meta") == ("abc", "meta")
    for bad in (b"events/session", b"session/abc", b"session/ABC/packet", b"session/abc/other"):
        with pytest.raises(ProtocolError):
            split_topic(bad)


@pytest.mark.parametrize("prefix,code", [
    (b"session/abc/", "abc"), (b"session/abc/packet", "abc"), (b"session/abc/me", "abc"),
    (b"", None), (b"session/", None), (b"session/ab", None), (b"events/session", None),
    (b"session/ABC/", None), (b"session/abc/x", None), (b"session//", None),
])
def test_session_of_subscription(prefix, code):
    assert session_of_subscription(prefix) == code


def test_requests_are_type_checked():
    command, args = parse_request(encode_request("seek", {"code": "a", "packet_id": 3}))
    assert command.name == "seek" and args == {"code": "a", "packet_id": 3}
    for frame, code in [
        (encode_request("seek", {"code": "a", "packet_id": True}), ErrorCode.BAD_REQUEST),
        (encode_request("seek", {"code": "a", "position_seconds": "1"}), ErrorCode.BAD_REQUEST),
        (encode_request("nope"), ErrorCode.UNKNOWN_COMMAND),
        (encode({"v": 2, "cmd": "ping"}), ErrorCode.UNSUPPORTED_VERSION),
        (b"\x93\x01", ErrorCode.BAD_REQUEST),
        (b"x" * (65 * 1024), ErrorCode.BAD_REQUEST),
    ]:
        with pytest.raises(CommandError) as info:
            parse_request(frame)
        assert info.value.code == code


def test_replies_round_trip():
    assert parse_reply(encode({"v": 1, "ok": True, "result": {"a": 1}})) == {"a": 1}
    with pytest.raises(CommandError) as info:
        parse_reply(encode({"v": 1, "ok": False, "error": {"code": "limit", "message": "full"}}))
    assert info.value.code == ErrorCode.LIMIT and info.value.message == "full"
    with pytest.raises(ProtocolError):
        decode(b"\xc1")
