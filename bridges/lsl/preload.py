"""Imported by the outlet hosts' forkserver alone (bridge.py's preload list), before any host is
forked: pylsl, numpy and the host module, and liblsl's configuration (lsl_api.cfg, read when the
first stream info is made; that starts no thread). Every host then starts with it read, and liblsl
logs its `Loaded default config` line once, not once per mirrored session.
"""
import pylsl

from bridges.lsl import host  # noqa: F401  (what every host runs)

pylsl.StreamInfo("PhantomLink-preload", "none", 1, 0.0, pylsl.cf_int32, "phantomlink-preload")
