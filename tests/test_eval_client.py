"""Withheld labels on every channel (ZMQ, WebSocket, LSL), and the phantomlink client package:
evaluate() over WebSocket and (asyncio) ZMQ, and a wheel that installs phantomlink alone."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import uuid
import zipfile

import numpy as np
import pylsl
import pytest
from sklearn.metrics import r2_score
from websockets.sync.client import connect

import phantomlink
from broker.binning import load_recording
from eval_support import ZmqDecoder, answer, create, evaluation, settled, stack  # noqa: F401
from processes import REPO_ROOT, Proc, base_env
from protocol.config import load_config

LABELS = ("kinematics", "intention")


@pytest.fixture(scope="module")
def recording():
    return load_recording(load_config({}).resolved_data_path(), 25)


def lsl_samples(name: str, n: int) -> list[list[float]]:
    found = pylsl.resolve_byprop("name", name, 1, 15)
    assert found, f"no LSL stream {name}"
    inlet = pylsl.StreamInlet(found[0], max_buflen=30, recover=False)
    inlet.open_stream(10)
    out = []
    while len(out) < n:
        sample, _ = inlet.pull_sample(10)
        assert sample is not None, "no LSL sample within 10 s"
        out.append(sample)
    return out


def test_a_withheld_session_carries_no_labels_anywhere_but_is_scored(stack, recording):
    broker, ws, http = stack
    token = uuid.uuid4().hex[:8]
    lsl = Proc.module("bridges.lsl", base_env(
        PHANTOM_PUB_ENDPOINT=broker.ready["pub"], PHANTOM_CONTROL_ENDPOINT=broker.ready["control"],
        PHANTOM_LSL_STREAM_NAME=f"EvalTest{token}", PHANTOM_LSL_SOURCE_ID=f"evaltest-{token}"))
    try:
        lsl.wait_ready(30)
        create(http, "ev-hidden", withhold_labels=True, speed=4.0)
        dec = ZmqDecoder(broker, "ev-hidden")
        meta = dec.wait_meta()["data"]
        assert meta["labels_withheld"] is True and meta["session"]["withhold_labels"] is True
        assert len(meta["heldout_unit_ids"]) + len(meta["heldin_unit_ids"]) == meta["num_channels"]
        assert sum(meta["heldout"]) == len(meta["heldout_unit_ids"])
        sent = []
        while len(sent) < 120:
            msg = dec.recv()
            if msg["type"] != "data":
                continue
            d = msg["data"]
            assert all(v is None for part in LABELS for v in d[part].values()), d
            dec.send(answer(msg, [0.0, 0.0]))
            sent.append(d["packet_id"])
        with connect(f"{ws.ready['url']}/stream/ev-hidden?format=json", open_timeout=10) as conn:
            frames = [json.loads(conn.recv(timeout=10)) for _ in range(40)]
        assert frames[0]["type"] == "metadata" and frames[0]["data"]["labels_withheld"] is True
        data = [f["data"] for f in frames if f["type"] == "data"]
        assert data and all(v is None for d in data for part in LABELS for v in d[part].values())
        kinematics = lsl_samples(f"EvalTest{token}-Kinematics-ev-hidden", 20)
        intention = lsl_samples(f"EvalTest{token}-Intention-ev-hidden", 20)
        assert all(math.isnan(v) for s in kinematics for v in s)
        assert all(s[0] == -1 and math.isnan(s[1]) and math.isnan(s[2]) for s in intention)
        report = settled(http, "ev-hidden", "default", len(sent))
        dec.close()
    finally:
        lsl.stop()
    scored = [k for k in sent if recording.observed[k] and recording.trial_index[k] >= 0]
    expected = r2_score(recording.velocity[scored], np.zeros((len(scored), 2)),
                        multioutput="variance_weighted")
    assert report["bins_scored"] == len(scored)
    assert report["velocity_r2"] == pytest.approx(expected, abs=1e-9)


class CountingDecoder(phantomlink.Decoder):
    """Predicts a constant and counts the FALCON hooks evaluate() calls."""

    def __init__(self):
        self.calls = {"reset": 0, "predict": 0, "observe": 0, "on_done": 0}
        self.widths = set()

    def reset(self, dataset_tags=None):
        self.calls["reset"] += 1

    def predict(self, neural_observations):
        self.calls["predict"] += 1
        self.widths.add(neural_observations.shape)
        return np.array([[3.0, -3.0]])

    def observe(self, neural_observations):
        self.calls["observe"] += 1

    def on_done(self, dones):
        self.calls["on_done"] += 1


def test_evaluate_drives_a_falcon_decoder_over_a_lockstep_websocket_session(stack, recording):
    _, _, http = stack
    decoder = CountingDecoder()
    start = recording.n_bins - 1500
    result = phantomlink.evaluate(decoder, url=f"http://{http.host}:{http.port}", start_packet=start, name="const")
    report = result["evaluation"]
    assert result["bins"] == 1500 and result["gaps"] == 0 and result["duplicates"] == 0
    assert decoder.calls["reset"] == 1 and decoder.calls["on_done"] == 1500
    assert decoder.calls["predict"] + decoder.calls["observe"] == 1500
    assert decoder.calls["observe"] == int((~recording.observed[start:]).sum())
    assert decoder.widths == {(1, recording.n_units)}
    assert report["predictions"] == 1500 and report["missing"] == 0 and report["invalid"] == 0
    assert report["velocity_r2"] < 0 and result["bins_per_second"] > 0
    session = http.get(f"/api/sessions/{result['session']}").json
    assert session["session_code"] == result["session"]


def test_aevaluate_over_zmq_stops_at_stop_packet(stack):
    broker, _, http = stack
    decoder = CountingDecoder()
    result = asyncio.run(phantomlink.aevaluate(
        decoder, url=f"http://{http.host}:{http.port}", transport="zmq", pub_endpoint=broker.ready["pub"],
        feedback_endpoint=broker.ready["feedback"], stop_packet=300, name="async"))
    assert result["bins"] == 300 and result["evaluation"]["predictions"] == 300
    assert result["evaluation"]["missing"] <= 1          # the bin after stop_packet, unanswered
    assert evaluation(http, result["session"])["labels_withheld"] is True


def test_the_wheel_installs_phantomlink_and_nothing_of_the_server(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO_ROOT),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("phantomlink-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"phantomlink", wheel.name.split("-py3")[0] + ".dist-info"}
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=120)
    probe = subprocess.run(
        [sys.executable, "-c", "import phantomlink, importlib.util as u; "
         "print(phantomlink.__file__, u.find_spec('broker'), u.find_spec('control'))"],
        cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(target / "phantomlink" / "__init__.py"), "None", "None"]


def test_stream_items_mark_gaps_and_drop_duplicates():
    from phantomlink.packets import message_item
    check = phantomlink.SequenceCheck()

    def data(seq):
        return {"type": "data", "session": "s", "data": {
            "sequence_number": seq, "packet_id": seq, "spikes": {"spike_counts": [1, 0, 2]},
            "kinematics": {"x": None, "y": None, "vx": 1.5, "vy": None}, "observed": True}}
    meta = message_item({"type": "metadata", "session": "s",
                         "data": {"bin_size_ms": 25, "unit_ids": [1, 2, 3],
                                  "heldout": [False, True, False], "session": {"state": "ended"}}},
                        check)
    assert isinstance(meta, phantomlink.Metadata) and meta.ended and meta.heldout.tolist() == [False, True, False]
    items = [message_item(data(seq), check) for seq in (0, 1, 4, 4, 3, 5)]
    assert [None if i is None else (i.sequence_number, i.gap) for i in items] == \
        [(0, 0), (1, 0), (4, 2), None, None, (5, 0)]
    assert (check.gaps, check.duplicates, check.packets) == (2, 2, 4)
    first = items[0]
    assert first.spikes.tolist() == [1, 0, 2] and first.velocity[0] == 1.5 and math.isnan(first.velocity[1])
