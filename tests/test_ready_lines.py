"""Every process prints its READY line whatever PHANTOM_LOG_LEVEL says: launchers wait for it."""
from __future__ import annotations

from processes import base_env


def test_every_process_prints_ready_at_log_level_warning(start_broker, spawn, tmp_path):
    broker = start_broker(PHANTOM_LOG_LEVEL="WARNING")
    common = dict(PHANTOM_LOG_LEVEL="WARNING", PHANTOM_PUB_ENDPOINT=broker.ready["pub"],
                  PHANTOM_CONTROL_ENDPOINT=broker.ready["control"], PHANTOM_CONTROL_PORT="0",
                  PHANTOM_WS_PORT="0", PHANTOM_LSL_STREAM_NAME=f"ReadyTest{tmp_path.name[-8:]}")
    procs = [spawn("control", base_env(**common)), spawn("bridges.ws", base_env(**common), "--dev"),
             spawn("bridges.lsl", base_env(**common))]
    for proc in procs:
        assert proc.wait_ready(timeout=60), proc.output()
    assert broker.ready["pub"].startswith("tcp://127.0.0.1:")
    assert procs[0].ready["url"].startswith("http://127.0.0.1:")
    assert procs[1].ready["url"].startswith("ws://127.0.0.1:")
    # Nothing else is logged at INFO: the level was honoured apart from the READY line.
    assert all(" INFO " not in line or "READY " in line for line in broker.lines), broker.output()
