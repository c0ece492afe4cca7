"""The prediction checks (protocol.predictions.parse_prediction) against the rules docs/protocol.md
states, written here independently: whatever value a field holds, the message is accepted exactly
when the rule says so, and an accepted value comes back as sent (as a float for numbers)."""
from __future__ import annotations

import math

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.predictions import BadPrediction, decode_message, parse_prediction

GOOD = {"type": "prediction", "session": "abc", "packet_id": 3, "sequence_number": 7,
        "velocity": [1.5, -2.0]}

ANY = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                st.lists(st.one_of(st.booleans(), st.integers(-10, 10),
                                   st.floats(allow_nan=True, allow_infinity=True),
                                   st.text(max_size=2)), max_size=3))


def is_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def is_index(x) -> bool:
    return type(x) is int and 0 <= x < 2 ** 63


def is_pair(x) -> bool:
    return type(x) is list and len(x) == 2 and all(is_number(v) for v in x)


def parsed(msg: dict):
    """The prediction a msgpack round trip of ``msg`` parses to, or None if it is refused."""
    try:
        return parse_prediction(decode_message(msgpack.packb(msg)))
    except BadPrediction as exc:
        assert exc.code == "bad_request"
        return None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["packet_id", "sequence_number", "target_id"]), ANY)
def test_an_index_field_is_accepted_exactly_when_it_is_a_non_negative_int64(key, value):
    p = parsed(GOOD | {key: value})
    if key == "target_id" and value is None:
        assert p is not None and p.target_id is None
    elif is_index(value):
        assert p is not None and getattr(p, key) == value and type(getattr(p, key)) is int
    else:
        assert p is None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["velocity", "position"]), ANY)
def test_a_pair_field_is_accepted_exactly_when_it_holds_two_finite_numbers(key, value):
    p = parsed(GOOD | {key: value})
    if key == "position" and value is None:
        assert p is not None and p.position is None
    elif is_pair(value):
        assert p is not None
        got = getattr(p, key)
        assert got == (float(value[0]), float(value[1]))
        assert all(type(v) is float for v in got)
    else:
        assert p is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["received_at", "sent_at"]), ANY)
def test_a_time_field_is_accepted_exactly_when_it_is_absent_or_finite(key, value):
    p = parsed(GOOD | {key: value})
    if value is None:
        assert p is not None and getattr(p, key) is None
    elif is_number(value):
        assert p is not None and getattr(p, key) == float(value) and type(getattr(p, key)) is float
    else:
        assert p is None


def test_the_fields_that_could_be_read_come_back_with_a_refusal():
    try:
        parse_prediction(GOOD | {"velocity": [1.0, float("nan")], "decoder": "ridge"})
    except BadPrediction as exc:
        assert exc.fields == {"session": "abc", "packet_id": 3, "sequence_number": 7,
                              "decoder": "ridge"}
        assert "velocity" in exc.message
    else:
        raise AssertionError("a NaN velocity was accepted")
