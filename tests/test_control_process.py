"""`python -m control` as a process: READY line, clean exit on signals, one-line start-up failures."""
from __future__ import annotations

import re
import signal
import shutil
import socket
import subprocess

import pytest

from processes import REPO_ROOT, base_env
from control_support import start_control

# Nothing listens here: these tests never send a request to the broker.
NO_BROKER = "tcp://127.0.0.1:9"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_then_clean_exit_on_signal(spawn, sig):
    proc, http = start_control(spawn, NO_BROKER)
    line = proc.wait_line("READY control ")
    assert re.search(r"READY control url=http://127\.0\.0\.1:\d+ broker=tcp://127\.0\.0\.1:9$", line)
    assert http.port != 0
    assert http.get("/openapi.json").status == 200
    assert proc.stop(sig) == 0
    assert "stopped" in proc.output()
    assert "Traceback" not in proc.output()


def exit_lines(proc, timeout: float = 20.0) -> tuple[int, list[str]]:
    code = proc.popen.wait(timeout)
    proc._reader.join(timeout)
    return code, [line for line in proc.output().splitlines() if line.strip()]


def test_port_in_use_exits_1_with_one_line(spawn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn("control", base_env(PHANTOM_CONTROL_PORT=str(port), PHANTOM_CONTROL_ENDPOINT=NO_BROKER))
        code, lines = exit_lines(proc)
    assert code == 1
    assert len(lines) == 1 and "cannot listen" in lines[0] and str(port) in lines[0], lines


@pytest.mark.parametrize("env, needle", [
    ({"PHANTOM_CONTROL_PORT": "eighty"}, "PHANTOM_CONTROL_PORT"),
    ({"PHANTOM_CONTROL_PORT": "70000"}, "PHANTOM_CONTROL_PORT"),
    ({"PHANTOM_CONTROL_TIMEOUT_MS": "0"}, "PHANTOM_CONTROL_TIMEOUT_MS"),
    ({"PHANTOM_CONTROL_ENDPOINT": "localhost:5556"}, "PHANTOM_CONTROL_ENDPOINT"),
    ({"PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:port"}, "PHANTOM_CONTROL_ENDPOINT"),
    ({"PHANTOM_CONTROL_ENDPOINT": "bogus://x"}, "PHANTOM_CONTROL_ENDPOINT"),
    ({"PHANTOM_NO_SUCH_SETTING": "1"}, "PHANTOM_NO_SUCH_SETTING"),
])
def test_bad_config_exits_2_with_one_line_naming_it(spawn, env, needle):
    proc = spawn("control", base_env(**env))
    code, lines = exit_lines(proc)
    assert code == 2
    assert len(lines) == 1 and needle in lines[0], lines


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_walkthrough_runs_against_a_live_stack(broker, spawn):
    _, http = start_control(spawn, broker.ready["control"])
    env = base_env(PHANTOM_URL=f"http://{http.host}:{http.port}", WALKTHROUGH_CODE="walk-test")
    done = subprocess.run(["bash", str(REPO_ROOT / "examples" / "curl_walkthrough.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = re.findall(r"\[HTTP (\d{3})\]", done.stdout)
    assert len(statuses) >= 25 and not [s for s in statuses if s.startswith("5")], statuses
    assert "phantomlink_session_packets_sent_total" in done.stdout
