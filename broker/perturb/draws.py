"""Counter-based random numbers: every draw is a function of (seed, session, stream, index) alone.

numpy's Philox is keyed by ``(seed, hash(session code))`` and its 256-bit counter starts at
``(0, index, hash(stream), 0)``; draws advance only the lowest word, so two different indices or
streams never share counter values, and no draw depends on what was drawn before. That is what
makes every perturbation reproducible (same seed and session code -> same packets), independent
across sessions, packets and units, and seekable (a packet's draws do not depend on history).
"""
from __future__ import annotations

import hashlib

import numpy as np

MASK64 = (1 << 64) - 1
PACKET_BLOCK = 32          # packets whose per-unit draws are made (and cached) together


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def generator(seed: int, session: str, stream: str, index: int) -> np.random.Generator:
    """A generator whose whole output is determined by its four arguments."""
    key = (seed & MASK64) | (hash64(session) << 64)
    counter = ((int(index) & MASK64) << 64) | (hash64(stream) << 128)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


class PacketDraws:
    """One standard normal and one uniform per (packet, unit), made a block of packets at a time.

    ``rows(packet_id)`` returns views into the cached block; the block is recomputed from its
    key when another one is needed (after a seek, a loop or simply the next block).
    """

    __slots__ = ("seed", "session", "stream", "n_units", "block", "normal", "uniform")

    def __init__(self, seed: int, session: str, stream: str, n_units: int):
        self.seed, self.session, self.stream, self.n_units = seed, session, stream, n_units
        self.block = -1
        self.normal = self.uniform = None

    def rows(self, packet_id: int) -> tuple[np.ndarray, np.ndarray]:
        block, row = divmod(packet_id, PACKET_BLOCK)
        if block != self.block:
            gen = generator(self.seed, self.session, self.stream, block)
            shape = (PACKET_BLOCK, self.n_units)
            self.normal = gen.standard_normal(shape, dtype=np.float32)
            self.uniform = gen.random(shape, dtype=np.float32)
            self.block = block
        return self.normal[row], self.uniform[row]

    def nbytes(self) -> int:
        return 0 if self.normal is None else self.normal.nbytes + self.uniform.nbytes
