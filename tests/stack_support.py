"""The whole Procfile stack as a user starts it (honcho), for the tests that drive it from outside.

No tests live here: conftest.py's module fixture ``honcho_stack`` uses it, and test_stack.py. The
broker runs on ipc:// endpoints; the door, control and the WebSocket bridge on ports the OS chose
(bound once to learn a free port, then handed to the stack, since the door must know control's and
the bridge's ports before they listen and ``stream_url`` must name the door's).
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from processes import Proc, base_env

VENV_BIN = Path(sys.executable).parent
PROCESSES = ("broker", "control", "ws", "lsl", "door")
READY_NAMES = {"door": "frontdoor"}     # Procfile name -> the name its READY line gives


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS just chose for us on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Stack:
    proc: Proc
    ready: dict[str, dict[str, str]]    # Procfile name -> its READY line's key=value fields
    door: str                           # http://127.0.0.1:<door port>
    port: int                           # the door's port, what the original README calls 8000

    @property
    def ws_door(self) -> str:
        return f"ws://localhost:{self.port}"


def start_honcho(tmp: Path) -> tuple[Proc, int]:
    """honcho start on the real Procfile; returns the process and the door's port."""
    door, ws, control = free_ports(3)
    env = base_env(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PHANTOM_PUB_ENDPOINT=f"ipc://{tmp}/pub",
        PHANTOM_CONTROL_ENDPOINT=f"ipc://{tmp}/control",
        PHANTOM_FEEDBACK_ENDPOINT=f"ipc://{tmp}/feedback",
        PHANTOM_FEEDBACK_PUSH_ENDPOINT=f"ipc://{tmp}/feedback-push",
        PHANTOM_STATE_PATH=str(tmp / "state.json"),
        PHANTOM_PORT=str(door),
        PHANTOM_WS_PORT=str(ws),
        PHANTOM_CONTROL_PORT=str(control),
    )
    return Proc([str(VENV_BIN / "honcho"), "start", "-f", "Procfile"], env, "honcho"), door


def wait_stack(proc: Proc, door: int, timeout: float = 90) -> Stack:
    ready = {}
    for name in PROCESSES:
        line = proc.wait_line(f"READY {READY_NAMES.get(name, name)} ", timeout=timeout)
        fields = line[line.index("READY "):].split()[2:]
        ready[name] = dict(f.split("=", 1) for f in fields if "=" in f)
    return Stack(proc, ready, f"http://127.0.0.1:{door}", door)
