"""How the kernel runs the broker's threads: their priority (PHANTOM_BROKER_PRIORITY) and their
CPUs (PHANTOM_BROKER_CPU). docs/broker.md, "Priority" and "One CPU under load", says why.

Priority. The loop must get a CPU within a fraction of a millisecond of each deadline, also while
other processes keep every core busy. ``auto`` (the default) asks for real-time scheduling
(SCHED_FIFO 10) where this process may (root, CAP_SYS_NICE or RLIMIT_RTPRIO), else nice -10, else
leaves it normal. A real-time thread that never blocks would starve the other processes on its
CPU, so under ``auto`` the loop watches its own CPU time (``Scheduling.housekeeping``): once it has
used SATURATED of a CPU over SATURATED_FOR_S, every thread goes back to nice -10 for good, with
one warning line. ``high`` (nice -10), ``realtime`` (SCHED_FIFO 10, never demoted) and ``normal``
are taken as asked.

CPUs. Every send to a subscriber connection that ZeroMQ's I/O thread has already drained wakes
that thread; on another CPU that wake-up is an inter-processor interrupt, which on a VM costs tens
of microseconds of CPU, while on the loop's own CPU the two simply take turns. ``auto`` (the
default) therefore keeps every thread on the CPU the loop runs on while the broker sends more than
HEAVY_PPS packets/s (the loop's rate measurement) and, whatever the rate, while the loop is
real-time (nothing else on its CPU can delay it then), with ZeroMQ's I/O threads (libzmq names
them ``ZMQbg/IO/<n>``) one step below the loop (IO_NICE_STEP nice levels, or one real-time
priority level), so that the loop is not kept waiting behind them when a packet falls due; a
time-shared loop below that rate lets its threads run on any allowed CPU again, at its priority,
so that it goes wherever a CPU is free. ``none`` leaves placement to
the kernel; a CPU number pins every thread there from start-up (``start``).

Each change is one log line. Only the OS's own calls are used, per thread id in /proc/self/task.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time

log = logging.getLogger("broker")

HEAVY_PPS = 10_000            # above this many packets/s (all sessions) the threads share one CPU
IO_NICE_STEP = 5              # ZeroMQ's I/O threads this many nice levels below the loop meanwhile
RT_PRIORITY = 10              # SCHED_FIFO priority of `realtime` and of `auto` where permitted
HIGH_NICE = -10               # nice value of `high`, and of `auto` where real-time is not permitted
SATURATED = 0.9               # a real-time loop using this share of a CPU ...
SATURATED_FOR_S = 2.0         # ... over this long goes back to HIGH_NICE (auto only)


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def _current_cpu() -> int | None:
    """The CPU the calling thread runs on (glibc's sched_getcpu), None where unknown."""
    try:
        cpu = ctypes.CDLL(None).sched_getcpu()
    except (OSError, AttributeError):
        return None
    return cpu if cpu >= 0 else None


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _io_threads() -> list[int]:
    """The thread ids of ZeroMQ's I/O threads (by the names libzmq gives them)."""
    found = []
    for tid in _threads():
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("ZMQbg/IO"):
                    found.append(tid)
        except OSError:
            pass
    return found


def _each(tids: list[int], call) -> bool:
    """``call(tid)`` for each thread; False if the OS refused any (a thread that ended is fine)."""
    ok = True
    for tid in tids:
        try:
            call(tid)
        except ProcessLookupError:
            pass
        except OSError:
            ok = False
    return ok


def _set_cpus(cpus: set[int]) -> bool:
    return _each(_threads(), lambda tid: os.sched_setaffinity(tid, cpus))


def _set_normal_policy(tids: list[int], nice: int) -> bool:
    """These threads time-shared (SCHED_OTHER) at nice value ``nice``."""
    def apply(tid: int) -> None:
        if os.sched_getscheduler(tid) != os.SCHED_OTHER:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    return _each(tids, apply)


def _is_fifo(tid: int) -> bool:
    try:
        return os.sched_getscheduler(tid) == os.SCHED_FIFO
    except OSError:
        return False


def _set_fifo(tids: list[int], priority: int) -> bool:
    return _each(tids, lambda tid: os.sched_setscheduler(tid, os.SCHED_FIFO,
                                                         os.sched_param(priority)))


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return []


def start(priority: str, cpu: str) -> str:
    """Apply both settings to the calling thread (threads made later inherit them) and say in one
    line each what the broker does; returns the priority level had: realtime, high or normal."""
    level = _start_priority(priority)
    _start_cpu(cpu)
    return level


def _start_priority(priority: str) -> str:
    if priority == "normal":
        return "normal"
    refused: Exception | None = None
    if priority in ("auto", "realtime"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
            log.info("scheduling priority: realtime (SCHED_FIFO %d)%s", RT_PRIORITY,
                     f" (PHANTOM_BROKER_PRIORITY=auto: back to nice {HIGH_NICE} if the loop keeps "
                     f"a CPU {SATURATED:.0%} busy for {SATURATED_FOR_S:g} s)"
                     if priority == "auto" else "")
            return "realtime"
        except (OSError, AttributeError) as exc:
            if priority == "realtime":
                log.warning("cannot raise the scheduling priority to realtime: %s (running at "
                            "normal priority)", exc)
                return "normal"
            refused = exc
    try:
        # absolute, so a broker already started at nice -10 (systemd's Nice=-10) keeps it
        os.setpriority(os.PRIO_PROCESS, 0, HIGH_NICE)
    except (OSError, AttributeError) as exc:
        if priority == "auto":
            log.info("scheduling priority: normal (PHANTOM_BROKER_PRIORITY=auto: raising it needs "
                     "root or CAP_SYS_NICE: %s)", exc)
        else:
            log.warning("cannot raise the scheduling priority to high: %s (running at normal "
                        "priority)", exc)
        return "normal"
    if priority == "auto":
        log.info("scheduling priority: high (nice %d) (PHANTOM_BROKER_PRIORITY=auto: real-time "
                 "scheduling is not permitted here: %s)", HIGH_NICE, refused)
    else:
        log.info("scheduling priority: high (nice %d)", HIGH_NICE)
    return "high"


def _start_cpu(setting: str) -> None:
    allowed = allowed_cpus()
    if setting == "none":
        log.info("cpu: threads placed by the kernel (PHANTOM_BROKER_CPU=none)")
    elif setting == "auto":
        if len(allowed) < 2:
            log.info("cpu: threads placed by the kernel (PHANTOM_BROKER_CPU=auto: one CPU allowed)")
        else:
            log.info("cpu: on one CPU while real-time or above %d packets/s, else any of %s "
                     "(PHANTOM_BROKER_CPU=auto)", HEAVY_PPS, _cpus(allowed))
    elif int(setting) not in allowed:
        log.warning("cpu: threads placed by the kernel (PHANTOM_BROKER_CPU=%s is not among the "
                    "allowed CPUs %s)", setting, _cpus(allowed))
    elif _set_cpus({int(setting)}):
        log.info("cpu: every thread on CPU %s (PHANTOM_BROKER_CPU=%s)", setting, setting)
    else:
        log.warning("cpu: threads placed by the kernel (PHANTOM_BROKER_CPU=%s was refused)", setting)


class Scheduling:
    """The ``auto`` policies at run time, driven by the loop (loop thread only)."""

    def __init__(self, priority: str, cpu: str):
        self.allowed = allowed_cpus()
        self.placing = cpu == "auto" and len(self.allowed) >= 2
        self.cpu: int | None = None           # the CPU every thread is on, while concentrated
        self.heavy = False                    # the packet rate is above HEAVY_PPS
        self.guarded = priority == "auto"     # a real-time loop goes back to nice if it saturates
        self._since = (time.monotonic(), time.thread_time())

    @staticmethod
    def realtime() -> bool:
        return os.sched_getscheduler(0) == os.SCHED_FIFO

    def started(self) -> None:
        """The loop is about to run (every thread of the broker exists): a real-time loop keeps
        its threads on one CPU from now on (nothing on it can delay the loop)."""
        self._place("a real-time loop")

    def rate(self, heavy: bool, pps: float) -> None:
        """The packet rate is now above (``heavy``) or at most HEAVY_PPS."""
        if heavy != self.heavy:
            self.heavy = heavy
            self._place(f"{pps:.0f} packets/s {'>' if heavy else '<='} {HEAVY_PPS}")

    def housekeeping(self, now: float) -> None:
        """About once a second: a real-time loop that kept its CPU busy goes back to nice."""
        since, used = self._since
        if now - since < SATURATED_FOR_S:
            return
        cpu_time = time.thread_time()
        self._since = (now, cpu_time)
        share = (cpu_time - used) / (now - since)
        if not self.guarded or share < SATURATED or not self.realtime():
            return
        self.guarded = False
        _set_normal_policy([tid for tid in _threads() if _is_fifo(tid)], HIGH_NICE)
        if self.cpu is not None:
            _set_normal_policy(_io_threads(), HIGH_NICE + IO_NICE_STEP)
        nice = os.getpriority(os.PRIO_PROCESS, 0)   # -10 unless lowering it was refused
        log.warning("scheduling priority: realtime -> %s (nice %d): the loop used %.0f%% of a "
                    "CPU over %.1f s, and a real-time thread that saturates a CPU starves the "
                    "other processes on it (PHANTOM_BROKER_PRIORITY=auto)",
                    "high" if nice <= HIGH_NICE else "normal", nice, 100 * share, now - since)
        self._place("a time-shared loop")

    # -- CPUs -------------------------------------------------------------------------------------
    def _place(self, why: str) -> None:
        """On one CPU while real-time or heavy, else anywhere, saying why in one line."""
        if not self.placing:
            return
        one = self.heavy or self.realtime()
        if one and self.cpu is None:
            self._concentrate(why)
        elif not one and self.cpu is not None:
            self._spread(why)

    def _below_loop(self) -> tuple[bool, str]:
        """Put ZeroMQ's I/O threads one step below the loop; (done, what that is)."""
        io = _io_threads()
        if self.realtime():
            priority = max(1, os.sched_getparam(0).sched_priority - 1)
            return _set_fifo(io, priority), f"SCHED_FIFO {priority}"
        nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + IO_NICE_STEP)
        return _set_normal_policy(io, nice), f"nice {nice}"

    def _level_with_loop(self) -> tuple[bool, str]:
        """ZeroMQ's I/O threads back at the loop's own policy and priority."""
        io = _io_threads()
        if self.realtime():
            priority = os.sched_getparam(0).sched_priority
            return _set_fifo(io, priority), f"SCHED_FIFO {priority}"
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        return _set_normal_policy(io, nice), f"nice {nice}"

    def _concentrate(self, why: str) -> None:
        cpu = _current_cpu()
        if cpu is None or cpu not in self.allowed:
            cpu = self.allowed[-1]
        if not _set_cpus({cpu}):
            _set_cpus(set(self.allowed))
            self.placing = False
            log.warning("cpu: keeping the threads on one CPU was refused; placed by the kernel "
                        "from now on")
            return
        self.cpu = cpu
        _, io = self._below_loop()
        log.info("cpu: every thread on CPU %d, ZeroMQ's I/O at %s: %s", cpu, io, why)

    def _spread(self, why: str) -> None:
        _set_cpus(set(self.allowed))
        self.cpu = None
        done, io = self._level_with_loop()
        if done:
            log.info("cpu: threads on any of %s again, ZeroMQ's I/O at %s: %s",
                     _cpus(self.allowed), io, why)
        else:
            log.info("cpu: threads on any of %s again (ZeroMQ's I/O stays one step below the "
                     "loop: raising it back needs root or CAP_SYS_NICE): %s", _cpus(self.allowed),
                     why)
