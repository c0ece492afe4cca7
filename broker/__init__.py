"""The replay broker: owns the dataset and every session, publishes packets on ZeroMQ."""

__version__ = "0.3.0"
