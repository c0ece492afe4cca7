"""What the control tests share: starting `python -m control` against a broker, and a tiny HTTP client.

No tests live here; the test_control*.py modules import it (pytest's pythonpath includes tests/).
"""
from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

import pytest

from processes import Proc, base_env


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        """The `error.code` of a JSON error body (fails the test if the shape is wrong)."""
        doc = self.json
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
        return doc["error"]["code"]


class Http:
    """Requests to one base URL over http.client, one connection per request, with a timeout."""

    def __init__(self, url: str, timeout: float = 10.0):
        parsed = urlparse(url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, data, hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Reply:
        return self.request("DELETE", path, **kw)


def control_env(broker_endpoint: str, **env: str) -> dict[str, str]:
    return base_env(PHANTOM_CONTROL_PORT="0", PHANTOM_CONTROL_ENDPOINT=broker_endpoint, **env)


def start_control(spawn: Callable[..., Proc], broker_endpoint: str, **env: str) -> tuple[Proc, Http]:
    """`python -m control` on an OS-chosen port, talking to ``broker_endpoint``; waits for READY."""
    proc = spawn("control", control_env(broker_endpoint, **env))
    ready = proc.wait_ready(timeout=30)
    assert ready["broker"] == broker_endpoint, ready
    return proc, Http(ready["url"])


def create(http: Http, code: str, **options: Any) -> dict[str, Any]:
    reply = http.post("/api/sessions/create", {"custom_code": code, **options})
    assert reply.status == 200, reply.body
    return reply.json


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One real broker and one real control for a whole test module: ``(http, control_proc)``.

    Control advertises ``ws://replay.example:8123`` stream URLs so tests can check the mapping.
    """
    tmp = tmp_path_factory.mktemp("control")
    procs: list[Proc] = []

    def spawn(module: str, env: dict[str, str]) -> Proc:
        proc = Proc.module(module, env)
        procs.append(proc)
        return proc

    try:
        broker = spawn("broker", base_env(PHANTOM_PUB_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_CONTROL_ENDPOINT="tcp://127.0.0.1:*",
                                          PHANTOM_STATE_PATH=str(tmp / "state.json")))
        broker.wait_ready(timeout=60)
        control, http = start_control(spawn, broker.ready["control"], PHANTOM_PORT="8123",
                                      PHANTOM_PUBLIC_HOST="replay.example")
        yield http, control
    finally:
        for proc in reversed(procs):
            proc.stop()
