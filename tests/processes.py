"""Real child processes for tests: start `python -m <module>`, wait for its READY line, clean up.

Every PhantomLink process logs one line starting with ``READY <name>`` followed by ``key=value``
pairs (e.g. ``READY broker pub=tcp://127.0.0.1:40123 control=tcp://127.0.0.1:40124 ...``) once it
listens; tests bind port 0 / ``tcp://127.0.0.1:*`` and read the real endpoints from that line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        threading.Event().wait(interval)


def base_env(**overrides: str) -> dict[str, str]:
    """The test environment: no inherited PHANTOM_* settings, unbuffered output, then overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHANTOM_")}
    env["PYTHONUNBUFFERED"] = "1"
    # a broker's prediction sockets on OS-chosen ports, so that test brokers never collide
    env["PHANTOM_FEEDBACK_ENDPOINT"] = "tcp://127.0.0.1:*"
    env["PHANTOM_FEEDBACK_PUSH_ENDPOINT"] = "tcp://127.0.0.1:*"
    env.update(overrides)
    return env


class Proc:
    """One child process whose merged stdout/stderr is collected line by line."""

    def __init__(self, args: list[str], env: Mapping[str, str], name: str):
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            args, cwd=REPO_ROOT, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready: dict[str, str] = {}

    @classmethod
    def module(cls, module: str, env: Mapping[str, str], *args: str) -> "Proc":
        return cls([sys.executable, "-m", module, *args], env, module)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, needle: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first line (from index ``start``) containing ``needle``; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"{self.name} exited with {self.popen.returncode} before "
                                         f"printing {needle!r}:\n{self.output()[-4000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name} did not print {needle!r} within {timeout} s:\n"
                                         f"{self.output()[-4000:]}")
                self._cond.wait(min(left, 0.1))

    def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        line = self.wait_line("READY ", timeout)
        fields = line[line.index("READY "):].split()[2:]
        self.ready = dict(f.split("=", 1) for f in fields if "=" in f)
        return self.ready

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process (and its group), wait for it, kill it if it hangs; returns its code."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._reader.join(timeout)
        if not self._reader.is_alive() and self.popen.stdout is not None:
            self.popen.stdout.close()   # else an unclosed-file ResourceWarning fails the run
        return self.popen.returncode


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (e.g. gunicorn's arbiter and its workers), from /proc."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                pids += process_tree(int(child))
    except OSError:
        pass
    return pids


def tree_resources(pid: int) -> dict[str, int]:
    """Summed over ``pid`` and its descendants, as /proc shows them: RSS (kB), open descriptors and
    threads (a process that exits meanwhile is left out)."""
    rss = fds = threads = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss += int(fields["VmRSS"].split()[0])
            threads += int(fields["Threads"])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, KeyError):
            continue
    return {"rss_kb": rss, "fds": fds, "threads": threads}


def stall(proc: "Proc", seconds: float) -> None:
    """Stop ``proc`` (SIGSTOP) for ``seconds``, then let it go on (SIGCONT): a stalled process,
    the condition under test (the sleep is the stall, not a wait)."""
    os.kill(proc.popen.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)

