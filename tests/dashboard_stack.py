"""The processes behind the dashboard in tests and benchmarks: broker, WS bridge and control.

Ports are chosen by the OS and read from READY lines; control is told the bridge's port
(PHANTOM_WS_PORT) so that /dashboard/config.json sends the page there.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from processes import Proc, base_env


class Stack:
    def __init__(self, state_dir: Path):
        self.procs: list[Proc] = []
        self.broker = self._start("broker", PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                  PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                  PHANTOM_STATE_PATH=str(state_dir / "broker-state.json"))
        self.ws_port = 0
        self.bridge = self.start_bridge()
        self.ws_port = urlparse(self.bridge.ready["url"]).port
        self.control = self._start("control", PHANTOM_PORT="0", PHANTOM_WS_PORT=str(self.ws_port),
                                   PHANTOM_CONTROL_ENDPOINT=self.broker.ready["control"])
        self.url = self.control.ready["url"]

    def _start(self, module: str, **env: str) -> Proc:
        proc = Proc.module(module, base_env(**env))
        self.procs.append(proc)
        proc.wait_ready(60)
        return proc

    def start_bridge(self) -> Proc:
        """A WS bridge on ``ws_port`` (0 at first: the OS chooses; later the same port again)."""
        return self._start("bridges.ws", PHANTOM_PUB_ENDPOINT=self.broker.ready["pub"],
                           PHANTOM_CONTROL_ENDPOINT=self.broker.ready["control"],
                           PHANTOM_FEEDBACK_ENDPOINT=self.broker.ready["feedback"],
                           PHANTOM_WS_PORT=str(self.ws_port))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
