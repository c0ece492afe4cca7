"""The bridge's gunicorn worker: gthread with its whole thread pool started when the worker boots.

gthread runs each request, and so each WebSocket connection for as long as it lasts, on a
``concurrent.futures.ThreadPoolExecutor``. That pool starts threads lazily, one whenever a request
arrives and no thread is idle, and never stops one: its size is the largest number of requests the
worker has ever served at once, so it creeps up over a long run (a client reconnecting while its
old connection is still being torn down, a ``/health`` request while every thread streams) until it
reaches ``--threads``. Here every thread is started at boot instead, so the worker holds exactly
``--threads`` pool threads from its first request to its last, plus one simple-websocket reader
thread per connected client, plus its own few (main, fan-out, malloc-trim, two ZeroMQ threads).

``ThreadWorker.get_thread_pool`` is gunicorn's documented hook for this ("Override this method to
customize how the thread pool is created"); the executor is the standard library's.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers.gthread import ThreadWorker

PRESTART_TIMEOUT_S = 60.0


class BridgeWorker(ThreadWorker):
    """gunicorn's gthread worker whose thread pool is complete before it serves anything."""

    def get_thread_pool(self) -> ThreadPoolExecutor:
        pool = prestarted_pool(self.cfg.threads)
        self.log.info("thread pool: %d threads started", self.cfg.threads)
        return pool


def prestarted_pool(size: int, timeout_s: float = PRESTART_TIMEOUT_S) -> ThreadPoolExecutor:
    """A ThreadPoolExecutor of ``size`` threads, all of them running when it is returned.

    ``size`` tasks that wait on one barrier are submitted: none can finish before the last is
    submitted, so no thread is idle at any submit and the executor starts a new thread for each
    (it reuses an idle thread only after a task has finished). With ``size`` threads alive, it
    never starts another (``max_workers``). RuntimeError if a thread cannot be started (e.g. a
    thread limit), so the worker fails at boot rather than at its n-th client."""
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ws-pool")
    barrier = threading.Barrier(size + 1)
    try:
        for _ in range(size):
            pool.submit(barrier.wait, timeout_s)
        barrier.wait(timeout_s)
    except BaseException:
        barrier.abort()
        pool.shutdown(wait=False)
        raise
    return pool
