"""The replay broker: owns the dataset and every session, publishes packets on ZeroMQ."""
