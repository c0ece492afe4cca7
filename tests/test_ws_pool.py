"""The WebSocket bridge worker's thread pool (bridges.ws.worker.LifoPool), with real threads:
complete at boot, fixed in size, and each request handed to the thread that went idle last, so a
worker that never served more than n clients at once has run only n of its threads (whose stacks
and malloc arenas are the only ones it touched)."""
from __future__ import annotations

import threading

import pytest

from bridges.ws.worker import LifoPool

SIZE = 64


@pytest.fixture
def pool():
    before = threading.active_count()
    p = LifoPool(SIZE)
    assert threading.active_count() == before + SIZE          # complete before the first submit
    yield p
    p.shutdown(wait=True)
    assert threading.active_count() == before                 # every thread gone


def test_one_request_at_a_time_runs_on_one_thread(pool):
    used = {pool.submit(threading.get_ident).result(5) for _ in range(500)}
    assert len(used) == 1


def test_threads_beyond_the_peak_are_never_woken(pool):
    release = threading.Event()
    started = threading.Barrier(11)

    def block():
        started.wait(5)
        release.wait(5)
        return threading.get_ident()

    busy = [pool.submit(block) for _ in range(10)]
    started.wait(5)                                            # ten at once
    release.set()
    peak = {f.result(5) for f in busy}
    assert len(peak) == 10
    later = {pool.submit(threading.get_ident).result(5) for _ in range(500)}
    assert later <= peak                                       # never an eleventh thread


def test_more_requests_than_threads_wait_and_all_complete(pool):
    gate = threading.Event()
    futures = [pool.submit(lambda i=i: (gate.wait(5), i)[1]) for i in range(SIZE * 3)]
    gate.set()
    assert [f.result(10) for f in futures] == list(range(SIZE * 3))
    assert threading.active_count() >= SIZE                    # no thread added for the backlog


def test_an_exception_reaches_the_caller_and_the_thread_serves_on(pool):
    def fail():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        pool.submit(fail).result(5)
    assert pool.submit(lambda: 42).result(5) == 42


def test_no_submit_after_shutdown():
    p = LifoPool(4)
    p.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        p.submit(lambda: None)
