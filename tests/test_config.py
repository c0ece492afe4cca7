"""The configuration table: defaults, converters, unknown and contradictory settings."""
from __future__ import annotations

import pytest

from protocol.config import DEFAULT_SYNTHETIC_PATH, SETTINGS, ConfigError, load_config


def test_defaults_match_the_architecture():
    config = load_config({})
    assert (config.bin_ms, config.port, config.ws_port, config.control_port) == (25, 8000, 8001, 8002)
    assert config.pub_endpoint == "tcp://127.0.0.1:5555"
    assert config.control_endpoint == "tcp://127.0.0.1:5556"
    assert (config.max_sessions, config.session_ttl_s) == (1000, 3600.0)
    assert config.host == "127.0.0.1"
    assert (config.lsl_enabled, config.lsl_stream_name, config.lsl_stream_type,
            config.lsl_source_id) == (True, "PhantomLink", "EEG", "PhantomLink-001")


def test_values_are_converted():
    config = load_config({"PHANTOM_BIN_MS": "5", "PHANTOM_LSL_ENABLED": "false",
                          "PHANTOM_DATA_PATH": "/tmp/x.nwb", "PHANTOM_LOG_LEVEL": "debug"})
    assert config.bin_ms == 5 and config.lsl_enabled is False
    assert str(config.resolved_data_path()) == "/tmp/x.nwb"
    assert config.log_level == "DEBUG"


def test_without_a_configured_file_the_synthetic_default_is_served(tmp_path):
    assert load_config({}).resolved_data_path() in (DEFAULT_SYNTHETIC_PATH,
                                                   DEFAULT_SYNTHETIC_PATH.parent.parent / "raw" / "mc_maze.nwb")


def test_every_problem_is_named_in_one_message():
    with pytest.raises(ConfigError) as err:
        load_config({"PHANTOM_PROT": "1", "PHANTOM_BIN_MS": "0", "PHANTOM_LSL_ENABLED": "maybe",
                     "PHANTOM_PUB_ENDPOINT": "localhost:5555"})
    text = str(err.value)
    for name in ("PHANTOM_PROT", "PHANTOM_BIN_MS", "PHANTOM_LSL_ENABLED", "PHANTOM_PUB_ENDPOINT"):
        assert name in text


@pytest.mark.parametrize("env, needle", [
    ({"PHANTOM_PORT": "8001"}, "PHANTOM_WS_PORT"),
    ({"PHANTOM_CONTROL_PORT": "8000"}, "PHANTOM_PORT and PHANTOM_CONTROL_PORT"),
    ({"PHANTOM_CONTROL_PORT": "8001"}, "PHANTOM_CONTROL_PORT and PHANTOM_WS_PORT"),
    ({"PHANTOM_WS_UPSTREAMS": "ws-1:8001,ws-2"}, "PHANTOM_WS_UPSTREAMS"),
    ({"PHANTOM_CONTROL_UPSTREAMS": "control:99999"}, "PHANTOM_CONTROL_UPSTREAMS"),
    ({"PHANTOM_PUBLIC_URL": "https://phantom.example.org"}, "PHANTOM_PUBLIC_URL"),
    ({"PHANTOM_CONTROL_ENDPOINT": "tcp://127.0.0.1:5555"}, "PHANTOM_CONTROL_ENDPOINT"),
    ({"PHANTOM_PORT": "70000"}, "PHANTOM_PORT"),
    ({"PHANTOM_SESSION_TTL_S": "-1"}, "PHANTOM_SESSION_TTL_S"),
    ({"PHANTOM_LOG_LEVEL": "LOUD"}, "PHANTOM_LOG_LEVEL"),
])
def test_contradictory_or_out_of_range_settings_fail(env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(env)


def test_stream_urls_and_upstreams_point_at_the_front_door_and_the_processes():
    config = load_config({})
    assert config.stream_base() == "ws://localhost:8000"
    assert config.upstreams() == (("127.0.0.1:8002",), ("127.0.0.1:8001",))
    config = load_config({"PHANTOM_PUBLIC_URL": "wss://phantom.example.org/", "PHANTOM_HOST": "0.0.0.0",
                          "PHANTOM_WS_UPSTREAMS": "ws-1:8001, ws-2:8001"})
    assert config.stream_base() == "wss://phantom.example.org"
    assert config.upstreams() == (("127.0.0.1:8002",), ("ws-1:8001", "ws-2:8001"))


def test_other_environment_variables_are_ignored():
    assert load_config({"PATH": "/bin", "PORT": "5000"}).port == 8000


def test_overrides_win_and_unknown_overrides_fail():
    assert load_config({"PHANTOM_PORT": "9000"}, port=0).port == 0
    with pytest.raises(ConfigError, match="nope"):
        load_config({}, nope=1)


def test_every_setting_is_documented_in_the_readme():
    from processes import REPO_ROOT
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in SETTINGS if f"`{name}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


def test_subscriptions_per_connection_leave_room_for_the_lsl_bridge():
    assert load_config({}).max_subscriptions_per_connection == 64
    assert load_config({"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": "33"}).lsl_max_sessions == 32
    with pytest.raises(ConfigError, match="PHANTOM_LSL_MAX_SESSIONS=32 needs "
                                          "PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION of at least 33"):
        load_config({"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": "32"})
    assert load_config({"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": "1",
                        "PHANTOM_LSL_ENABLED": "false"}).max_subscriptions_per_connection == 1
    with pytest.raises(ConfigError, match="PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION"):
        load_config({"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": "0"})
