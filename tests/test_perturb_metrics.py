"""The transport faults' counters, read from outside: the broker's `metrics` reply, against what a
real subscriber saw missing from the stream. Late-skipping is at its default (50 ms): ticks skipped as late are
counted apart (`packets_skipped`) and reconciled, never assumed away."""
from __future__ import annotations

from broker_client import BrokerClient
from protocol.wire import session_topic


def play(client: BrokerClient, code: str, ticks: int) -> tuple[set[int], int]:
    """Sequence numbers received from a (paused, faulted) session resumed until it played past
    ``ticks``, then paused and drained; and how many ticks it played."""
    sub = client.session(code)
    client.call("resume", code=code)
    topic = session_topic(code, "packet")
    seen, played = set(), None
    while True:
        message = sub.recv(timeout=10 if played is None else 0.3)
        if message is None:
            assert played is not None, f"{code} stopped after {len(seen)} packets"
            break
        if message[0] == topic:
            seen.add(message[1]["data"]["sequence_number"])
            if played is None and message[1]["data"]["sequence_number"] >= ticks:
                played = client.call("pause", code=code)["sequence_number"]
    sub.close()
    return seen, played


def session_figures(client: BrokerClient, code: str) -> dict:
    return client.call("metrics")["sessions"][code]


def test_fault_counters_survive_a_change_of_the_perturbations(broker, clients):
    """A counter counts what its name says: changing the set (which rebuilds the engine) must not
    forget the packets already dropped."""
    client = clients(broker)
    client.call("create", code="keep-count", speed=50, paused=True,
                perturbations={"seed": 3, "items": [{"kind": "drop", "id": "d", "rate": 0.2}]})
    seen, played = play(client, "keep-count", 400)
    before = session_figures(client, "keep-count")
    lost = played - len(seen)
    assert before["perturbations"]["dropped"] == lost - before["packets_skipped"] > 40
    client.call("set_perturbations", code="keep-count",
                perturbations={"seed": 3, "items": [{"kind": "drop", "id": "d", "rate": 0.2},
                                                    {"kind": "latency", "delay_ms": 1, "jitter_ms": 0}]})
    after = session_figures(client, "keep-count")["perturbations"]
    assert after["dropped"] == before["perturbations"]["dropped"]
    more, total = play(client, "keep-count", played + 400)
    figures = session_figures(client, "keep-count")
    assert figures["perturbations"]["dropped"] == \
        total - len(seen | more) - figures["packets_skipped"] > before["perturbations"]["dropped"]
    assert figures["perturbations"]["delayed"] == len(more)      # every packet sent after the change
    client.call("clear_perturbations", code="keep-count")
    assert session_figures(client, "keep-count")["perturbations"]["dropped"] == \
        figures["perturbations"]["dropped"]
