"""Transport faults: what happens to each tick's packet on its way out, decided per tick.

Every decision is a function of (seed, session code, fault id, tick) and the fault's schedule
level at the tick's packet id: draws are made for blocks of BLOCK ticks from a generator keyed by
the block index, so a session that jumps ahead (no subscriber for a while) needs no history.

- drop: the packet is not sent (rate * level).
- burst_drop: a Gilbert-Elliott channel, good -> bad with p_enter per tick, bad -> good with
  p_exit; loss probability loss_good / loss_bad (times the level). The chain restarts from its
  stationary distribution at every block boundary (every BLOCK ticks).
- latency: sent max(0, delay_ms + jitter_ms * z) * level later; jitter larger than the packet
  interval reorders packets.
- reorder: sent 1.5 intervals late, i.e. right after the next packet.
- duplicate: sent twice; the copy has the same sequence number and `duplicate: true`.
- freeze: stalls of duration_ms start at rate_per_min (Poisson); ticks due during a stall are sent
  together when it ends (mode burst) or never (mode skip).
- clock_drift: every tick's deadline moves by ppm * 1e-6 * interval (the broker applies it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from broker.perturb.draws import generator
from broker.perturb.spec import Item

BLOCK = 256
COUNTERS = ("dropped", "burst_dropped", "frozen_skipped", "frozen_held", "delayed", "reordered",
            "duplicated")


@dataclass
class Plan:
    """The fate of one tick: sent after ``delay_s`` (0: now), or not at all (``lost`` says why)."""
    lost: str | None = None
    delay_s: float = 0.0
    duplicate: bool = False
    marks: tuple[str, ...] = ()      # what delayed it: delayed, reordered, frozen_held


class Fault:
    def __init__(self, item: Item, seed: int, session: str, bin_ms: int):
        self.item, self.p, self.bin_ms = item, item.params, bin_ms
        self.seed, self.session = seed, session
        self.block, self.draws = -1, None

    def rng(self, block: int) -> np.random.Generator:
        return generator(self.seed, self.session, f"{self.item.kind}:{self.item.id}:transport", block)

    def row(self, tick: int):
        block, j = divmod(tick, BLOCK)
        if block != self.block:
            self.draws, self.block = self.prepare(block), block
        return self.draws, j

    def prepare(self, block: int):
        return self.rng(block).random(BLOCK)

    def apply(self, tick: int, level: float, interval: float, plan: Plan) -> None:
        raise NotImplementedError


class Drop(Fault):
    def apply(self, tick, level, interval, plan):
        u, j = self.row(tick)
        if plan.lost is None and u[j] < self.p["rate"] * level:
            plan.lost = "dropped"


class BurstDrop(Fault):
    def prepare(self, block):
        gen = self.rng(block)
        move, loss = gen.random(BLOCK), gen.random(BLOCK)
        p_enter, p_exit = self.p["p_enter"], self.p["p_exit"]
        stationary = p_enter / (p_enter + p_exit) if p_enter + p_exit > 0 else 0.0
        bad = np.empty(BLOCK, dtype=bool)
        state = bool(gen.random() < stationary)
        for j in range(BLOCK):
            bad[j] = state
            state = bool(move[j] >= p_exit) if state else bool(move[j] < p_enter)
        return bad, loss

    def apply(self, tick, level, interval, plan):
        (bad, loss), j = self.row(tick)
        p = self.p["loss_bad"] if bad[j] else self.p["loss_good"]
        if plan.lost is None and loss[j] < p * level:
            plan.lost = "burst_dropped"


class Latency(Fault):
    def prepare(self, block):
        return self.rng(block).standard_normal(BLOCK)

    def apply(self, tick, level, interval, plan):
        z, j = self.row(tick)
        delay = max(0.0, self.p["delay_ms"] + self.p["jitter_ms"] * z[j]) * level / 1000.0
        if delay > 0:
            plan.delay_s += delay
            plan.marks += ("delayed",)


class Reorder(Fault):
    def apply(self, tick, level, interval, plan):
        u, j = self.row(tick)
        if u[j] < self.p["rate"] * level:
            plan.delay_s += 1.5 * interval
            plan.marks += ("reordered",)


class Duplicate(Fault):
    def apply(self, tick, level, interval, plan):
        u, j = self.row(tick)
        if u[j] < self.p["rate"] * level:
            plan.duplicate = True


class Freeze(Fault):
    """Stalls: ``hold[j]`` = ticks from tick j to the end of the stall it falls in (0: none)."""

    def stalls(self, block: int) -> list[tuple[int, int]]:
        gen = self.rng(block)
        block_min = BLOCK * self.bin_ms / 60000.0
        n = gen.poisson(self.p["rate_per_min"] * block_min)
        length = max(1, math.ceil(self.p["duration_ms"] / self.bin_ms))
        starts = block * BLOCK + gen.integers(0, BLOCK, n)
        return [(int(s), int(s) + length) for s in starts]

    def prepare(self, block):
        hold = np.zeros(BLOCK, dtype=np.int64)
        first = block * BLOCK
        for start, end in self.stalls(block - 1) + self.stalls(block):
            for tick in range(max(start, first), min(end, first + BLOCK)):
                hold[tick - first] = max(hold[tick - first], end - tick)
        return hold

    def apply(self, tick, level, interval, plan):
        hold, j = self.row(tick)
        if hold[j] == 0 or level <= 0:
            return
        if self.p["mode"] == "skip":
            if plan.lost is None:
                plan.lost = "frozen_skipped"
        else:
            plan.delay_s += hold[j] * interval
            plan.marks += ("frozen_held",)


FAULTS: dict[str, type[Fault]] = {"drop": Drop, "burst_drop": BurstDrop, "latency": Latency,
                                  "reorder": Reorder, "duplicate": Duplicate, "freeze": Freeze}


class FaultCounts:
    """What a session's transport faults did since the session was created: packets per COUNTERS
    entry and the clock drift's total shift of its schedule. The session owns it, so it outlives
    the engines that a change of perturbations replaces."""

    __slots__ = ("counts", "clock_offset_s")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.clock_offset_s = 0.0

    def summary(self) -> dict:
        return {**self.counts, "clock_offset_ms": round(self.clock_offset_s * 1000.0, 4)}


class TransportFaults:
    """Every transport fault of one session, counting what they do into ``tally``."""

    def __init__(self, items: list[Item], seed: int, session: str, bin_ms: int,
                 tally: FaultCounts | None = None):
        self.faults = [FAULTS[i.kind](i, seed, session, bin_ms) for i in items if i.kind in FAULTS]
        self.clocks = [i for i in items if i.kind == "clock_drift"]
        self.tally = tally if tally is not None else FaultCounts()
        self.counts = self.tally.counts

    def plan(self, tick: int, packet_id: int, interval: float) -> Plan:
        plan = Plan()
        counts = self.counts
        for fault in self.faults:
            level = fault.item.schedule.level(packet_id)
            if level > 0:
                fault.apply(tick, level, interval, plan)
        if plan.lost is not None:
            counts[plan.lost] += 1
            plan.delay_s, plan.duplicate = 0.0, False
            return plan
        for mark in plan.marks:
            counts[mark] += 1
        if plan.duplicate:
            counts["duplicated"] += 1
        return plan

    def clock_step(self, packet_id: int, interval: float) -> float:
        """Seconds the next deadline moves by (the sender's clock error over one interval)."""
        ppm = sum(i.params["ppm"] * i.schedule.level(packet_id) for i in self.clocks)
        step = ppm * 1e-6 * interval
        self.tally.clock_offset_s += step
        return step

    def summary(self) -> dict:
        return self.tally.summary()
