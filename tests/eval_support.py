"""Shared by the evaluation tests: a broker + WebSocket bridge + control stack and a raw ZMQ
decoder (SUB on a session, DEALER or PUSH on the broker's feedback sockets)."""
from __future__ import annotations

import msgpack
import pytest
import zmq

from control_support import Http, start_control
from processes import Proc, base_env, wait_for

CTX = zmq.Context.instance()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """broker, WebSocket bridge and control (whose stream_url names the bridge: no front door here)."""
    tmp = tmp_path_factory.mktemp("eval")
    procs: list[Proc] = []

    def spawn(module: str, env: dict[str, str]) -> Proc:
        procs.append(Proc.module(module, env))
        return procs[-1]
    try:
        broker = spawn("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_STATE_PATH=str(tmp / "state.json")))
        broker.wait_ready(60)
        ws = spawn("bridges.ws", base_env(PHANTOM_PUB_ENDPOINT=broker.ready["pub"],
                                          PHANTOM_CONTROL_ENDPOINT=broker.ready["control"],
                                          PHANTOM_FEEDBACK_ENDPOINT=broker.ready["feedback"],
                                          PHANTOM_WS_PORT="0"))
        ws.wait_ready(30)
        port = ws.ready["url"].rsplit(":", 1)[1]
        _, http = start_control(spawn, broker.ready["control"],
                                PHANTOM_PUBLIC_URL=f"ws://127.0.0.1:{port}")
        yield broker, ws, http
    finally:
        for proc in reversed(procs):
            proc.stop()


def create(http: Http, code: str, **options) -> dict:
    reply = http.post("/api/sessions/create", {"custom_code": code, **options})
    assert reply.status == 200, reply.body
    return reply.json


def evaluation(http: Http, code: str, query: str = "") -> dict:
    reply = http.get(f"/api/sessions/{code}/evaluation{query}")
    assert reply.status == 200, reply.body
    return reply.json


def settled(http: Http, code: str, decoder: str, predictions: int) -> dict:
    """The decoder's evaluation once the server has counted ``predictions`` answers."""
    last: dict = {}

    def counted():
        last.update(evaluation(http, code))
        report = last["decoders"].get(decoder) or {}
        return report.get("predictions", -1) >= predictions and report
    try:
        return wait_for(counted, 20, f"{predictions} predictions counted", interval=0.05)
    except AssertionError:
        summary = {k: v for k, v in last.items() if k != "decoders"}
        counts = {name: {k: d[k] for k in ("predictions", "invalid", "missing")}
                  for name, d in last.get("decoders", {}).items()}
        raise AssertionError(f"{predictions} predictions not counted: {summary} {counts}") from None


class ZmqDecoder:
    """A raw ZMQ decoder: SUB on the session, DEALER (or PUSH) to the feedback sockets."""

    def __init__(self, broker: Proc, code: str, push: bool = False):
        self.sub = CTX.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.connect(broker.ready["pub"])
        self.sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
        self.out = CTX.socket(zmq.PUSH if push else zmq.DEALER)
        self.out.setsockopt(zmq.LINGER, 0)
        self.out.connect(broker.ready["feedback_push" if push else "feedback"])
        self.code = code

    def recv(self, timeout: float = 10.0) -> dict:
        assert self.sub.poll(int(timeout * 1000)), "no message from the broker"
        return msgpack.unpackb(self.sub.recv_multipart()[1])

    def wait_meta(self) -> dict:
        while True:
            msg = self.recv()
            if msg["type"] == "metadata":
                return msg

    def send(self, obj) -> None:
        self.out.send(obj if isinstance(obj, bytes) else msgpack.packb(obj))

    def reply(self, timeout: float = 5.0) -> dict:
        assert self.out.poll(int(timeout * 1000)), "no reply on the feedback socket"
        return msgpack.unpackb(self.out.recv())

    def close(self) -> None:
        self.sub.close(0)
        self.out.close(0)


def answer(msg: dict, velocity, decoder: str = "default", **extra) -> dict:
    d = msg["data"]
    return {"type": "prediction", "session": msg["session"], "packet_id": d["packet_id"],
            "sequence_number": d["sequence_number"], "velocity": list(velocity),
            "decoder": decoder, **extra}


def truth(d: dict, key_x: str, key_y: str) -> list[float]:
    k = d["kinematics"]
    return [k[key_x] if k[key_x] is not None else 0.0, k[key_y] if k[key_y] is not None else 0.0]
