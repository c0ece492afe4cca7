"""The PhantomLink wire: topics, frames, commands and configuration shared by every process.

Depends only on the standard library and msgpack; protocol.client (the one broker command client
every process uses) adds pyzmq and is imported on its own. docs/protocol.md describes the same thing for
people writing clients in other languages; the two must agree (tests/test_protocol_doc.py).
"""
from protocol.wire import (
    PROTOCOL_VERSION,
    EVENTS_TOPIC,
    KIND_META,
    KIND_PACKET,
    SESSION_PREFIX,
    ProtocolError,
    decode,
    encode,
    session_of_subscription,
    session_topic,
    split_topic,
    validate_code,
)
from protocol.commands import (
    COMMANDS,
    CommandError,
    ErrorCode,
    encode_error,
    encode_ok,
    encode_request,
    parse_reply,
    parse_request,
)

__all__ = [
    "PROTOCOL_VERSION", "EVENTS_TOPIC", "KIND_META", "KIND_PACKET", "SESSION_PREFIX",
    "ProtocolError", "decode", "encode", "session_of_subscription", "session_topic", "split_topic",
    "validate_code", "COMMANDS", "CommandError", "ErrorCode", "encode_error", "encode_ok",
    "encode_request", "parse_reply", "parse_request",
]
