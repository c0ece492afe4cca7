"""The replay broker: owns the dataset and every session, publishes packets on ZeroMQ."""

from protocol.version import __version__

__all__ = ["__version__"]
