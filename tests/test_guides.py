"""The guides' code runs as printed: docs/guides/bci-basics.md's first decoder against a real
broker and control (a decoder that decodes nothing fails), and docs/guides/metrics.md's scrape
config, alert rules and every PromQL example in a real Prometheus scraping a real control."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import zmq

from control_support import create, start_control
from processes import wait_for

GUIDES = Path(__file__).resolve().parent.parent / "docs" / "guides"
DEFAULT_API, DEFAULT_DATA = "http://localhost:8000", "tcp://127.0.0.1:5555"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def first_decoder() -> str:
    text = (GUIDES / "bci-basics.md").read_text()
    section = text[text.index("## A first decoder in 20 lines"):]
    return python_blocks(section)[0]


def test_the_first_decoder_is_20_lines():
    code = first_decoder()
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    assert DEFAULT_API in code and DEFAULT_DATA in code  # the addresses `make run` serves


def test_the_first_decoder_runs_and_decodes(broker, spawn, tmp_path):
    _, http = start_control(spawn, broker.ready["control"])
    code = first_decoder().replace(DEFAULT_API, f"http://{http.host}:{http.port}") \
                          .replace(DEFAULT_DATA, broker.ready["pub"])
    script = tmp_path / "first_decoder.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = re.search(r"R\^2 vx (-?[0-9.]+), vy (-?[0-9.]+)", run.stdout)
    assert found, run.stdout
    r2_vx, r2_vy = map(float, found.groups())
    # A linear decoder recovers velocity from these units (about 0.6 here); shuffled or
    # misaligned spikes and kinematics would score about 0.
    assert r2_vx > 0.35 and r2_vy > 0.35, run.stdout


# -- docs/guides/metrics.md: its prometheus.yml, rules and PromQL in a real Prometheus -------------

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                      reason="needs Debian's prometheus (.ci/run installs it)")


def metrics_guide_blocks() -> tuple[str, str, list[str]]:
    """(prometheus.yml, the rules file, the PromQL queries) as the guide prints them."""
    text = (GUIDES / "metrics.md").read_text()
    yamls = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
    promql = re.findall(r"^```promql\n(.*?)^```", text, flags=re.S | re.M)[0]
    queries = [line for line in promql.splitlines() if line.strip() and not line.startswith("#")]
    return yamls[0], yamls[1], queries


def free_port() -> int:
    """A port the OS picked just now (Prometheus cannot report one it chose itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        doc = json.load(reply)
    assert doc["status"] == "success", (promql, doc)
    return doc["data"]["result"]


@needs_prometheus
def test_metrics_guide_config_and_rules_are_valid(tmp_path):
    config, rules, _ = metrics_guide_blocks()
    (tmp_path / "phantomlink-rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(config + "rule_files: [phantomlink-rules.yml]\n")
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],
                 ["check", "rules", str(tmp_path / "phantomlink-rules.yml")]):
        run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr


@needs_prometheus
def test_every_promql_example_returns_data_from_a_real_prometheus(broker, spawn, tmp_path):
    config, _, queries = metrics_guide_blocks()
    assert len(queries) >= 10
    _, http = start_control(spawn, broker.ready["control"])
    create(http, "guide-metrics", speed=4)
    sub = zmq.Context.instance().socket(zmq.SUB)  # a session publishes only while someone listens
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(broker.ready["pub"])
    sub.setsockopt(zmq.SUBSCRIBE, b"session/guide-metrics/")
    assert "localhost:8000" in config and "scrape_interval: 15s" in config
    config = config.replace("localhost:8000", f"{http.host}:{http.port}") \
                   .replace("scrape_interval: 15s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    prometheus = spawn_prometheus(tmp_path, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 30, "prometheus to answer")
        for _ in range(3):
            http.post("/api/control/guide-metrics/speed", {"speed": 4})
        # Rates need two scrapes inside their window; wait for four.
        wait_for(lambda: _scrapes(base) >= 4, 30, "four scrapes of control")
        for promql in queries:
            assert query(base, promql), f"no data for: {promql}"
        assert float(query(base, 'up{job="phantomlink"}')[0]["value"][1]) == 1
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        log.close()
        sub.close()


def spawn_prometheus(tmp_path: Path, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _scrapes(base: str) -> int:
    result = query(base, 'count_over_time(up{job="phantomlink"}[1m])')
    return int(float(result[0]["value"][1])) if result else 0
