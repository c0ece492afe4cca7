"""The decoder interface evaluate() drives: FALCON's BCIDecoder (reset, predict, observe,
on_done), with no dependency on falcon_challenge. A falcon_challenge BCIDecoder works as is."""
from __future__ import annotations

import numpy as np


class Decoder:
    """Subclass and implement ``predict``; the other hooks default to doing nothing."""

    def reset(self, dataset_tags: list[str] | None = None) -> None:
        """A new session starts (``dataset_tags``: its code)."""

    def predict(self, neural_observations: np.ndarray) -> np.ndarray:
        """(batch, channels) spike counts of one bin -> (batch, >= 2): vx, vy in mm/s first."""
        raise NotImplementedError

    def observe(self, neural_observations: np.ndarray) -> None:
        """A bin with no prediction wanted (between trials); FALCON's default predicts and drops."""
        self.predict(neural_observations)

    def on_done(self, dones: np.ndarray) -> None:
        """After every bin: ``dones[i]`` is True when a trial ended in it."""
