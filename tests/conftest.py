"""Shared fixtures: real PhantomLink processes on OS-chosen ports, always cleaned up."""
from __future__ import annotations

import pytest

from broker_client import BrokerClient
from processes import Proc, base_env


@pytest.fixture
def clients():
    """connect(proc) -> a BrokerClient on that broker's endpoints, closed after the test."""
    made: list[BrokerClient] = []

    def connect(proc) -> BrokerClient:
        made.append(BrokerClient(proc.ready))
        return made[-1]

    yield connect
    for c in made:
        c.close()


@pytest.fixture
def spawn():
    """Factory: ``spawn(module, env, *args)`` starts a Proc; every Proc is stopped at teardown."""
    procs: list[Proc] = []

    def start(module: str, env: dict[str, str] | None = None, *args: str) -> Proc:
        proc = Proc.module(module, env if env is not None else base_env(), *args)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()


@pytest.fixture
def start_broker(spawn, tmp_path):
    """Factory: start `python -m broker` on OS-chosen endpoints (READY keys `pub`, `control`).

    Keyword arguments become environment variables (e.g. PHANTOM_MAX_SESSIONS="3"); the session
    state file lives in the test's tmp_path unless PHANTOM_STATE_PATH is given.
    """
    def start(**env: str) -> Proc:
        settings = {
            "PHANTOM_PUB_ENDPOINT": "tcp://127.0.0.1:*",
            "PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:*",
            "PHANTOM_STATE_PATH": str(tmp_path / "broker-state.json"),
            **env,
        }
        proc = spawn("broker", base_env(**settings))
        proc.wait_ready(timeout=60)
        return proc

    return start


@pytest.fixture
def broker(start_broker) -> Proc:
    """A running broker on the default dataset; ``broker.ready['pub']`` / ``['control']``."""
    return start_broker()


@pytest.fixture(scope="module")
def honcho_stack(tmp_path_factory):
    """The whole Procfile stack started with honcho, shared by the tests of one module (it goes
    with the module, so its playing sessions and LSL outlets never load later modules' timing)."""
    from stack_support import start_honcho, wait_stack

    proc, door = start_honcho(tmp_path_factory.mktemp("stack"))
    try:
        yield wait_stack(proc, door)
    finally:
        proc.stop()
