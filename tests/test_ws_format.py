"""The WebSocket format rule (contract 9): which frames and messages a URL and a handshake get.

An explicit ``?format=`` wins; otherwise an ``Origin`` header (a browser) gets JSON text frames and
no Origin gets msgpack; ``/stream/binary/<code>`` is always msgpack. A URL without ``?format=``
(the original PhantomLink's form) carries packets only unless ``?metadata=true``. ``/stream`` with
no code streams a fresh session that goes away with its connection.
"""
from __future__ import annotations

import json

import msgpack
import pytest
import simple_websocket

from broker_client import command
from processes import wait_for
from test_ws import Client, broker, bridge, stack  # noqa: F401  (the shared broker and bridge)

BROWSER = {"Origin": "http://localhost:8000"}


def first_messages(bridge, path: str, n: int = 6, headers: dict | None = None) -> list[tuple[str, dict]]:
    """The first ``n`` messages of ``path`` as (frame kind, decoded message)."""
    ws = Client.connect(bridge.ready["url"] + path, headers=headers)
    try:
        out = []
        while len(out) < n:
            frame = ws.receive(timeout=5)
            assert frame is not None, f"only {len(out)} messages from {path} within 5 s"
            if isinstance(frame, str):
                out.append(("text", json.loads(frame)))
            else:
                out.append(("binary", msgpack.unpackb(frame)))
        return out
    finally:
        ws.close()


@pytest.mark.parametrize("path, headers, kind, metadata_first", [
    ("/stream/fmt-plain", None, "binary", False),                 # the README's Python snippet
    ("/stream/fmt-browser", BROWSER, "text", False),              # the README's JavaScript snippet
    ("/stream/fmt-target?target_id=0", None, "binary", False),
    ("/stream/fmt-ex-mp?format=msgpack", BROWSER, "binary", True),  # explicit format wins
    ("/stream/fmt-ex-json?format=json", None, "text", True),
    ("/stream/binary/fmt-bin", BROWSER, "binary", True),          # always msgpack
    ("/stream/fmt-meta?metadata=true", None, "binary", True),
    ("/stream/fmt-meta-b?metadata=1", BROWSER, "text", True),
    ("/stream/fmt-nometa?format=json&metadata=false", None, "text", False),
])
def test_format_rule(bridge, path, headers, kind, metadata_first):
    got = first_messages(bridge, path, headers=headers)
    assert {k for k, _ in got} == {kind}, got[:2]
    types = [m["type"] for _, m in got]
    if metadata_first:
        assert types[0] == "metadata" and set(types[1:]) == {"data"}, types
    else:
        assert set(types) == {"data"}, types
        assert all(len(m["data"]["spikes"]["spike_counts"]) == 142 for _, m in got)


def test_bad_metadata_value_is_refused(bridge):
    ws = Client.connect(bridge.ready["url"] + "/stream/fmt-bad?metadata=maybe")
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        while True:
            ws.receive(timeout=5)
    assert closed.value.reason == 4400 and "metadata" in closed.value.message


def test_stream_without_code_gets_a_fresh_session_that_ends_with_it(broker, bridge):
    before = {s["code"] for s in command(broker, "list")["sessions"]}
    ws = Client.connect(bridge.ready["url"] + "/stream?metadata=true")
    try:
        meta = msgpack.unpackb(ws.receive(timeout=5))
        assert meta["type"] == "metadata"
        packet = msgpack.unpackb(ws.receive(timeout=5))
        code = packet["session"]
        assert code not in before
        assert packet["data"]["packet_id"] < 10, "a fresh session starts at the beginning"
        other = first_messages(bridge, "/stream", n=1)[0][1]
        assert other["session"] != code, "each connection gets its own session"
    finally:
        ws.close()
    wait_for(lambda: code not in {s["code"] for s in command(broker, "list")["sessions"]}, 5,
             f"the fresh session {code} to be deleted once its connection closed")


@pytest.mark.parametrize("path, headers", [
    ("/stream/fmt-ids?channel_ids=true", None),
    ("/stream/fmt-ids-json?channel_ids=1", BROWSER),
    ("/stream/fmt-ids-mp?format=msgpack&channel_ids=true", None),
])
def test_channel_ids_opt_in_names_the_units_of_every_packet(broker, bridge, path, headers):
    unit_ids = command(broker, "dataset")["unit_ids"]
    packets = [m for _, m in first_messages(bridge, path, n=8, headers=headers) if m["type"] == "data"]
    assert len(packets) >= 6
    for p in packets:
        assert p["data"]["spikes"]["channel_ids"] == unit_ids
        assert len(p["data"]["spikes"]["spike_counts"]) == len(unit_ids) == 142


def test_packets_carry_no_channel_ids_unless_asked(bridge):
    packets = [m for _, m in first_messages(bridge, "/stream/fmt-noids") if m["type"] == "data"]
    assert packets and all("channel_ids" not in p["data"]["spikes"] for p in packets)
