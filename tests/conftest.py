"""Shared fixtures: real PhantomLink processes on OS-chosen ports, always cleaned up."""
from __future__ import annotations

import pytest

from processes import Proc, base_env


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
