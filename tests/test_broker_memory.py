"""The broker's memory under subscribers that stop reading, measured from outside (VmRSS of its
/proc status): their queues fill up to PHANTOM_PUB_QUEUE_PACKETS and stop there, and when they
leave the memory goes back to the system (protocol.memory), instead of the RSS staying at the
largest backlog ever queued."""
from __future__ import annotations

import zmq

from broker_client import command
from processes import tree_resources, wait_for

QUEUE = 20_000          # the default, explicit: the test's sizes follow from it
SLOW = 2                # subscribers that never read, one session each at speed 1000


def rss_mib(proc) -> float:
    return tree_resources(proc.popen.pid)["rss_kb"] / 1024


def test_a_slow_subscribers_queue_is_given_back_when_it_leaves(start_broker):
    broker = start_broker(PHANTOM_PUB_QUEUE_PACKETS=str(QUEUE), PHANTOM_LOG_LEVEL="WARNING")
    codes = [f"slow-{i}" for i in range(SLOW)]
    for code in codes:
        command(broker, "create", code=code, speed=1000)
    base = rss_mib(broker)
    ctx = zmq.Context()
    subs = []
    try:
        for code in codes:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 10)          # the backlog stays in the broker's queue
            sub.setsockopt(zmq.RCVBUF, 65536)
            sub.connect(broker.ready["pub"])
            sub.setsockopt(zmq.SUBSCRIBE, f"session/{code}/".encode())
            subs.append(sub)
        # 20,000 packets of this dataset are about 11 MiB: two full queues hold more than 15
        wait_for(lambda: rss_mib(broker) - base >= 15, 30, "the slow subscribers' queues to fill")
        for code in codes:
            command(broker, "pause", code=code)
        held = rss_mib(broker) - base
    finally:
        for sub in subs:
            sub.close()
        ctx.term()
    try:
        wait_for(lambda: rss_mib(broker) - base < 4, 15, "the queues' memory to be given back")
    except AssertionError:
        raise AssertionError(f"the broker grew by {held:.1f} MiB with {SLOW} slow subscribers and "
                             f"still holds {rss_mib(broker) - base:.1f} MiB of it after they left") from None
