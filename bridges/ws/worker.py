"""The bridge's gunicorn worker: gthread with its whole thread pool started when the worker boots,
handing each request to the thread that went idle last.

gthread runs each request, and so each WebSocket connection for as long as it lasts, on its thread
pool. The standard ``ThreadPoolExecutor`` starts threads lazily, one whenever a request arrives and
no thread is idle, and never stops one: its size is the largest number of requests the worker has
ever served at once, so it creeps up over a long run (a client reconnecting while its old
connection is still being torn down, a ``/health`` request while every thread streams) until it
reaches ``--threads``. Here every thread is started at boot instead (``LifoPool``), so the worker
holds exactly ``--threads`` pool threads from its first request to its last, plus one
simple-websocket reader thread per connected client, plus its own few (main, fan-out, malloc-trim,
two ZeroMQ threads). Idle threads wait on a stack: a request goes to the thread that finished
last, so threads beyond the most the worker has needed at once are never woken and their stacks
and malloc arenas are never touched (a FIFO hand-out would run every thread in turn and grow the
worker's memory towards all of them).

``ThreadWorker.get_thread_pool`` is gunicorn's documented hook for this ("Override this method to
customize how the thread pool is created"); gthread calls only ``submit`` and ``shutdown`` on it.
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Executor, Future

from gunicorn.workers.gthread import ThreadWorker

PRESTART_TIMEOUT_S = 60.0


class BridgeWorker(ThreadWorker):
    """gunicorn's gthread worker whose thread pool is complete before it serves anything."""

    def get_thread_pool(self) -> "LifoPool":
        pool = LifoPool(self.cfg.threads)
        self.log.info("thread pool: %d threads started", self.cfg.threads)
        return pool


class LifoPool(Executor):
    """A fixed pool of ``size`` threads, all running when the constructor returns; ``submit``
    hands the call to the most recently idle thread (a stack), or queues it while all are busy.
    RuntimeError if a thread cannot be started within ``timeout_s`` (e.g. a thread limit), so a
    worker fails at boot rather than at its n-th client."""

    def __init__(self, size: int, timeout_s: float = PRESTART_TIMEOUT_S, name: str = "ws-pool"):
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []               # a stack: the last to go idle is taken first
        self._backlog: collections.deque = collections.deque()
        self._closed = False
        self._threads = []
        started = threading.Barrier(size + 1)       # every thread idle, then the constructor returns
        try:
            for i in range(size):
                thread = threading.Thread(target=self._run, args=(_Slot(), started),
                                          name=f"{name}_{i}", daemon=True)
                thread.start()                          # RuntimeError at a thread limit
                self._threads.append(thread)
            started.wait(timeout_s)
        except (threading.BrokenBarrierError, RuntimeError) as exc:
            started.abort()                             # threads already waiting give up
            self.shutdown(wait=False)
            raise RuntimeError(f"{name}: only {len(self._idle)} of {size} threads started "
                               f"within {timeout_s:g} s ({exc or type(exc).__name__})") from None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            if self._idle:
                slot = self._idle.pop()
                slot.work = (future, fn, args, kwargs)
                slot.ready.set()
            else:
                self._backlog.append((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._backlog:
                    self._backlog.popleft()[0].cancel()
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.work = None                          # stop
            slot.ready.set()
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _run(self, slot: "_Slot", started: threading.Barrier) -> None:
        with self._lock:
            self._idle.append(slot)
        try:
            started.wait()
        except threading.BrokenBarrierError:
            return                                     # the pool never came up
        while True:
            slot.ready.wait()
            slot.ready.clear()
            work, slot.work = slot.work, None
            if work is None:                           # shut down
                return
            while work is not None:
                future, fn, args, kwargs = work
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:  # the caller sees it on the future
                        future.set_exception(exc)
                del future, fn, args, kwargs
                with self._lock:
                    if self._backlog:
                        work = self._backlog.popleft()
                    elif self._closed:
                        return
                    else:
                        work = None
                        self._idle.append(slot)


class _Slot:
    __slots__ = ("ready", "work")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.work = None
