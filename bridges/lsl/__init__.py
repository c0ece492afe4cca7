"""LSL bridge: mirrors the broker's sessions as Lab Streaming Layer outlets (`python -m bridges.lsl`).

- streams.py: the four outlets of one session and how a packet becomes their samples;
- bridge.py: follows the broker (lifecycle events, packets) and keeps the set of mirrored sessions;
- __main__.py: configuration, logging, signals.
docs/lsl.md describes the streams for users.
"""
