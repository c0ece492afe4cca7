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
PACKET_BLOCK = 8          # packets whose per-unit draws are made (and cached) together


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def generator(seed: int, session: str, stream: str, index: int) -> np.random.Generator:
    """A generator whose whole output is determined by its four arguments."""
    key = (seed & MASK64) | (hash64(session) << 64)
    counter = ((int(index) & MASK64) << 64) | (hash64(stream) << 128)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


class PacketDraws:
    """One standard normal and one uniform per (packet, unit), made a block of PACKET_BLOCK packets
    at a time (the block index keys the generator).

    ``rows(first, stop)`` returns the draws of packets first..stop-1, which may reach into the
    next block (at most PACKET_BLOCK packets); the last two blocks used are kept, others are
    recomputed from their key when needed again (after a seek, a loop or simply the next block).
    """

    __slots__ = ("seed", "session", "stream", "n_units", "blocks")

    def __init__(self, seed: int, session: str, stream: str, n_units: int):
        self.seed, self.session, self.stream, self.n_units = seed, session, stream, n_units
        self.blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        got = self.blocks.get(index)
        if got is None:
            gen = generator(self.seed, self.session, self.stream, index)
            shape = (PACKET_BLOCK, self.n_units)
            got = (gen.standard_normal(shape, dtype=np.float32), gen.random(shape, dtype=np.float32))
            self.blocks = {k: v for k, v in self.blocks.items() if k == index - 1}
            self.blocks[index] = got
        return got

    def has(self, index: int) -> bool:
        """Whether block ``index``'s draws are made (kept)."""
        return index in self.blocks

    def rows(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        index, row = divmod(first, PACKET_BLOCK)
        normal, uniform = self.block(index)
        end = row + stop - first
        if end <= PACKET_BLOCK:
            return normal[row:end], uniform[row:end]
        more_normal, more_uniform = self.block(index + 1)
        end -= PACKET_BLOCK
        return (np.concatenate((normal[row:], more_normal[:end])),
                np.concatenate((uniform[row:], more_uniform[:end])))

    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.blocks.values())
