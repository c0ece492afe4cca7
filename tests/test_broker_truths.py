"""Small truths of the broker's replies and events: seeking by time lands on the bin containing
that time, seek and filter replies say where playback is, and an unwatched session that ends
says so when it ends."""
from __future__ import annotations

import pytest

from broker_client import BrokerClient
from protocol import CommandError
from protocol.wire import EVENTS_TOPIC, session_topic


@pytest.fixture
def client(broker):
    c = BrokerClient(broker.ready)
    yield c
    c.close()


@pytest.mark.parametrize("seconds, packet", [(8.075, 323), (8.0749, 322), (0.0, 0), (12.51, 500),
                                             (0.025, 1), (0.3, 12)])
def test_seek_by_position_seconds_lands_on_the_bin_containing_it(client, seconds, packet):
    client.call("create", code="by-time", paused=True)
    assert client.call("seek", code="by-time", position_seconds=seconds)["current_packet"] == packet


def test_seek_by_time_checks_its_arguments(client):
    client.call("create", code="bad-seek", paused=True)
    total_s = client.call("dataset")["duration_seconds"]
    for args, code in (({}, "bad_request"), ({"packet_id": 1, "position_seconds": 1.0}, "bad_request"),
                       ({"position_seconds": -0.001}, "out_of_range"),
                       ({"position_seconds": total_s}, "out_of_range"),
                       ({"position_seconds": float("nan")}, "out_of_range"),
                       ({"position_seconds": 1e400}, "out_of_range")):
        with pytest.raises(CommandError) as info:
            client.call("seek", code="bad-seek", **args)
        assert info.value.code.value == code, args


def test_seek_under_a_filter_reports_the_bin_it_really_plays(client):
    trial = client.call("trials")["trials"][4]
    client.call("create", code="filtered-seek", paused=True, filter={"trial_id": trial["trial_id"]})
    sub = client.session("filtered-seek")
    reply = client.call("seek", code="filtered-seek", packet_id=0)   # before the trial: not in it
    assert reply["current_packet"] == trial["first_bin"]
    client.call("resume", code="filtered-seek")
    first = sub.packets("filtered-seek", 1)[0]
    assert first["packet_id"] == reply["current_packet"]
    assert first["sequence_number"] == reply["sequence_number"]


def test_filter_reply_is_where_the_stream_goes(client):
    trial = client.call("trials")["trials"][6]
    client.call("create", code="flt-reply", speed=2)
    sub = client.session("flt-reply")
    reply = client.call("filter", code="flt-reply", trial_id=trial["trial_id"])
    topic = session_topic("flt-reply", "packet")
    first = sub.wait(lambda t, m: t == topic and m["data"]["trial_id"] == trial["trial_id"], 3,
                     "a packet of the trial")[1]["data"]
    assert (reply["current_packet"], reply["playlist_position"]) == (trial["first_bin"], 0)
    assert first["packet_id"] == reply["current_packet"]
    assert first["sequence_number"] == reply["sequence_number"]


def test_an_unwatched_session_that_ends_emits_changed(client):
    events = client.subscribe(EVENTS_TOPIC)
    probe = client.session("probe")          # events flow once the probe's meta arrived
    probe.close()
    total = client.call("dataset")["total_packets"]
    client.call("create", code="alone", speed=100, loop=False, paused=True)
    client.call("seek", code="alone", packet_id=total - 20)      # 20 bins at speed 100: 5 ms
    client.call("resume", code="alone")
    _, msg = events.wait(lambda t, m: m["event"] == "changed" and m["session"]["code"] == "alone"
                         and m["session"]["state"] == "ended", 3, "a changed event saying ended")
    assert msg["session"]["current_packet"] == total
