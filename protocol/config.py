"""Configuration: every PHANTOM_* setting, its converter and default, read once per process.

Each process calls load_config() at start-up and passes the frozen Config down; nothing reads the
environment later. Unknown PHANTOM_* names and unparseable values fail with one message naming them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REAL_PATH = REPO_ROOT / "data" / "raw" / "mc_maze.nwb"
DEFAULT_SYNTHETIC_PATH = REPO_ROOT / "data" / "synthetic" / "mc_maze_small_synthetic.nwb"


class ConfigError(ValueError):
    """Bad configuration; the message names every offending setting."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0-65535 (0 lets the OS choose)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _send_batch_us(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 5000:
        raise ValueError("must be between 0 and 5000 (microseconds)")
    return value


def _wake_grid_ms(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 25:
        raise ValueError("must be between 0 and 25 (milliseconds; 0 turns wake-up groups off)")
    return value


def _endpoint(text: str) -> str:
    if "://" not in text:
        raise ValueError("expected a ZeroMQ endpoint such as tcp://127.0.0.1:5555")
    return text


def _upstreams(text: str) -> tuple[str, ...]:
    """``host:port[,host:port...]`` (empty: the default upstream) -> a tuple of addresses."""
    out = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in out:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"expected host:port entries separated by commas, not {address!r}")
    return out


def _public_url(text: str) -> str:
    value = text.strip().rstrip("/")
    if value and not value.startswith(("ws://", "wss://")):
        raise ValueError("expected a ws:// or wss:// base URL such as wss://phantom.example.org")
    return value


def _priority(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "normal", "high", "realtime"):
        raise ValueError("use auto, normal, high or realtime")
    return value


def _cpu(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "none") and not (value.isdigit() and int(value) < 4096):
        raise ValueError("use auto, none or a CPU number")
    return value


def _optional_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped), lower-cased: host names or origins."""
    return tuple(item.strip().lower().rstrip("/") for item in text.split(",") if item.strip())


def _origins(text: str) -> tuple[str, ...]:
    items = _names(text)
    for item in items:
        if item != "*" and "://" not in item:
            raise ValueError(f"{item!r} is not an origin such as https://lab.example.org")
    return items


def _token(text: str) -> str:
    token = text.strip()
    if token and len(token) < 16:
        raise ValueError("an access token needs at least 16 characters")
    return token


@dataclass(frozen=True)
class Config:
    data_path: Path | None          # None: data/raw/mc_maze.nwb if present, else the synthetic file
    bin_ms: int
    host: str
    port: int                       # the front door (reverse proxy): REST and streams on one origin
    control_port: int               # the control process itself
    ws_port: int                    # the WebSocket bridge itself
    public_host: str                # host name put into stream_url for clients
    public_url: str                 # ws(s):// base of stream_url; "" means ws://{public_host}:{port}
    control_upstreams: tuple[str, ...]  # control processes behind the front door; () means host:control_port
    ws_upstreams: tuple[str, ...]   # the WebSocket bridges behind the front door; () means host:ws_port
    tls_port: int                   # the front door's HTTPS port, when tls_cert and tls_key are set
    tls_cert: Path | None           # PEM certificate chain for the front door's TLS
    tls_key: Path | None            # its private key
    pub_endpoint: str
    control_endpoint: str
    feedback_endpoint: str          # broker ROUTER for predictions from DEALER clients (and the WS bridge)
    feedback_push_endpoint: str     # broker PULL for predictions from PUSH clients
    max_sessions: int
    session_ttl_s: float
    late_skip_ms: float             # a packet later than this is skipped and counted
    peer_timeout_s: float           # a data-socket peer silent this long (no heartbeat reply) is dropped
    send_batch_us: float            # under heavy load, due packets wait up to this long to go out together
    wake_grid_ms: float             # sessions consumed mid-playback close their bins on this grid (0: off)
    state_path: Path | None         # where the broker saves sessions; None: beside the cache
    control_timeout_ms: int         # how long control waits for the broker before answering 503
    ws_buffer_packets: int          # per WebSocket client queue before the oldest is dropped
    lsl_enabled: bool
    lsl_stream_name: str
    lsl_stream_type: str
    lsl_source_id: str
    lsl_max_sessions: int
    log_level: str
    broker_priority: str            # auto (high where permitted), normal, high (nice -10), realtime (SCHED_FIFO 10)
    broker_cpu: str                 # auto (one CPU for all its threads), none, or a CPU number
    # -- access control and limits (docs/security.md) --
    auth_token: str = field(repr=False)     # "" = no token required; else Bearer token for REST/WS
    auth_token_file: Path | None            # where auth_token was read from, if a file
    allowed_hosts: tuple[str, ...]          # Host names accepted besides loopback names ("*": any)
    allowed_origins: tuple[str, ...]        # WebSocket Origins accepted besides own/loopback ("*": any)
    cors_origins: tuple[str, ...]           # origins control sends CORS headers to (none by default)
    curve_dir: Path | None                  # CURVE certificates (python -m protocol.curve keygen DIR)
    ws_max_message_bytes: int               # inbound WebSocket message limit (close 1009 past it)
    ws_max_clients: int                     # WebSocket clients per bridge worker
    ws_max_per_address: int                 # WebSocket clients per client address per worker
    ws_send_timeout_s: float                # a peer that takes no data for this long is cut
    max_sessions_per_client: int            # auto-created sessions per client address
    evict_grace_s: float                    # an idle session is evictable once untouched this long
    pub_queue_packets: int                  # broker messages queued per data subscriber (ZMQ SNDHWM)
    max_subscriptions_per_connection: int   # subscriptions one data connection may hold counted

    def resolved_data_path(self) -> Path:
        """The NWB file to serve: the configured one, else the real default, else the synthetic."""
        if self.data_path is not None:
            return self.data_path
        return DEFAULT_REAL_PATH if DEFAULT_REAL_PATH.exists() else DEFAULT_SYNTHETIC_PATH

    def stream_base(self) -> str:
        """The ws(s):// origin clients stream from: the front door unless PHANTOM_PUBLIC_URL says."""
        return self.public_url or f"ws://{self.public_host}:{self.port}"

    def upstreams(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(control, WebSocket bridges) addresses the front door forwards to."""
        local = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        return (self.control_upstreams or (f"{local}:{self.control_port}",),
                self.ws_upstreams or (f"{local}:{self.ws_port}",))


# env name -> (field, converter, default text)
SETTINGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "PHANTOM_DATA_PATH": ("data_path", _optional_path, ""),
    "PHANTOM_BIN_MS": ("bin_ms", _positive_int, "25"),
    "PHANTOM_HOST": ("host", str, "127.0.0.1"),
    "PHANTOM_PORT": ("port", _port, "8000"),
    "PHANTOM_CONTROL_PORT": ("control_port", _port, "8002"),
    "PHANTOM_WS_PORT": ("ws_port", _port, "8001"),
    "PHANTOM_PUBLIC_HOST": ("public_host", str, "localhost"),
    "PHANTOM_PUBLIC_URL": ("public_url", _public_url, ""),
    "PHANTOM_CONTROL_UPSTREAMS": ("control_upstreams", _upstreams, ""),
    "PHANTOM_WS_UPSTREAMS": ("ws_upstreams", _upstreams, ""),
    "PHANTOM_TLS_PORT": ("tls_port", _port, "8443"),
    "PHANTOM_TLS_CERT": ("tls_cert", _optional_path, ""),
    "PHANTOM_TLS_KEY": ("tls_key", _optional_path, ""),
    "PHANTOM_PUB_ENDPOINT": ("pub_endpoint", _endpoint, "tcp://127.0.0.1:5555"),
    "PHANTOM_CONTROL_ENDPOINT": ("control_endpoint", _endpoint, "tcp://127.0.0.1:5556"),
    "PHANTOM_FEEDBACK_ENDPOINT": ("feedback_endpoint", _endpoint, "tcp://127.0.0.1:5557"),
    "PHANTOM_FEEDBACK_PUSH_ENDPOINT": ("feedback_push_endpoint", _endpoint, "tcp://127.0.0.1:5558"),
    "PHANTOM_MAX_SESSIONS": ("max_sessions", _positive_int, "1000"),
    "PHANTOM_SESSION_TTL_S": ("session_ttl_s", _positive_float, "3600"),
    "PHANTOM_LATE_SKIP_MS": ("late_skip_ms", _positive_float, "50"),
    "PHANTOM_PEER_TIMEOUT_S": ("peer_timeout_s", _positive_float, "10"),
    "PHANTOM_SEND_BATCH_US": ("send_batch_us", _send_batch_us, "500"),
    "PHANTOM_WAKE_GRID_MS": ("wake_grid_ms", _wake_grid_ms, "5"),
    "PHANTOM_STATE_PATH": ("state_path", _optional_path, ""),
    "PHANTOM_CONTROL_TIMEOUT_MS": ("control_timeout_ms", _positive_int, "1000"),
    "PHANTOM_WS_BUFFER_PACKETS": ("ws_buffer_packets", _positive_int, "256"),
    "PHANTOM_LSL_ENABLED": ("lsl_enabled", _bool, "true"),
    "PHANTOM_LSL_STREAM_NAME": ("lsl_stream_name", str, "PhantomLink"),
    "PHANTOM_LSL_STREAM_TYPE": ("lsl_stream_type", str, "EEG"),
    "PHANTOM_LSL_SOURCE_ID": ("lsl_source_id", str, "PhantomLink-001"),
    "PHANTOM_LSL_MAX_SESSIONS": ("lsl_max_sessions", _positive_int, "32"),
    "PHANTOM_LOG_LEVEL": ("log_level", str.upper, "INFO"),
    "PHANTOM_BROKER_PRIORITY": ("broker_priority", _priority, "auto"),
    "PHANTOM_BROKER_CPU": ("broker_cpu", _cpu, "auto"),
    "PHANTOM_AUTH_TOKEN": ("auth_token", _token, ""),
    "PHANTOM_AUTH_TOKEN_FILE": ("auth_token_file", _optional_path, ""),
    "PHANTOM_ALLOWED_HOSTS": ("allowed_hosts", _names, ""),
    "PHANTOM_ALLOWED_ORIGINS": ("allowed_origins", _origins, ""),
    "PHANTOM_CORS_ORIGINS": ("cors_origins", _origins, ""),
    "PHANTOM_CURVE_DIR": ("curve_dir", _optional_path, ""),
    "PHANTOM_WS_MAX_MESSAGE_BYTES": ("ws_max_message_bytes", _positive_int, "65536"),
    "PHANTOM_WS_MAX_CLIENTS": ("ws_max_clients", _positive_int, "480"),
    "PHANTOM_WS_MAX_PER_ADDRESS": ("ws_max_per_address", _positive_int, "64"),
    "PHANTOM_WS_SEND_TIMEOUT_S": ("ws_send_timeout_s", _positive_float, "10"),
    "PHANTOM_MAX_SESSIONS_PER_CLIENT": ("max_sessions_per_client", _positive_int, "100"),
    "PHANTOM_EVICT_GRACE_S": ("evict_grace_s", _positive_float, "300"),
    "PHANTOM_PUB_QUEUE_PACKETS": ("pub_queue_packets", _positive_int, "20000"),
    "PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION": ("max_subscriptions_per_connection", _positive_int,
                                                 "64"),
}
assert {f for f, _, _ in SETTINGS.values()} == {f.name for f in fields(Config)}


def _contradictions(values: dict[str, Any]) -> list[str]:
    """Settings that parse on their own but cannot work together."""
    out = []
    endpoints = {"PHANTOM_PUB_ENDPOINT": values["pub_endpoint"],
                 "PHANTOM_CONTROL_ENDPOINT": values["control_endpoint"],
                 "PHANTOM_FEEDBACK_ENDPOINT": values["feedback_endpoint"],
                 "PHANTOM_FEEDBACK_PUSH_ENDPOINT": values["feedback_push_endpoint"]}
    names = list(endpoints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if endpoints[a] == endpoints[b] and "*" not in endpoints[a]:
                out.append(f"{a} and {b} must differ")
    ports = {"PHANTOM_PORT": values["port"], "PHANTOM_CONTROL_PORT": values["control_port"],
             "PHANTOM_WS_PORT": values["ws_port"], "PHANTOM_TLS_PORT": values["tls_port"]}
    names = list(ports)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if ports[a] == ports[b] != 0:
                out.append(f"{a} and {b} must differ")
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        out.append("PHANTOM_TLS_CERT and PHANTOM_TLS_KEY go together: give both or neither")
    if values["auth_token"] and values["auth_token_file"] is not None:
        out.append("set PHANTOM_AUTH_TOKEN or PHANTOM_AUTH_TOKEN_FILE, not both")
    # the LSL bridge holds events/session and one prefix per mirrored session on one connection
    lsl_needs = values["lsl_max_sessions"] + 1
    if values["lsl_enabled"] and values["max_subscriptions_per_connection"] < lsl_needs:
        out.append(f"PHANTOM_LSL_MAX_SESSIONS={values['lsl_max_sessions']} needs "
                   f"PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION of at least {lsl_needs} (the LSL "
                   "bridge subscribes to events and to each mirrored session on one connection)")
    return out


def _read_token_file(values: dict[str, Any]) -> list[str]:
    """Fill auth_token from PHANTOM_AUTH_TOKEN_FILE; the problems found, if any."""
    path = values["auth_token_file"]
    if path is None:
        return []
    try:
        values["auth_token"] = _token(path.read_text())
    except OSError as exc:
        return [f"PHANTOM_AUTH_TOKEN_FILE={str(path)!r}: cannot read it: {exc.strerror or exc}"]
    except ValueError as exc:
        return [f"PHANTOM_AUTH_TOKEN_FILE={str(path)!r}: {exc}"]
    if not values["auth_token"]:
        return [f"PHANTOM_AUTH_TOKEN_FILE={str(path)!r}: the file is empty"]
    return []


def load_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the Config from PHANTOM_* variables (os.environ by default); keyword overrides win."""
    env = os.environ if environ is None else environ
    problems = [f"{name}: unknown setting" for name in sorted(env)
                if name.startswith("PHANTOM_") and name not in SETTINGS]
    values: dict[str, Any] = {}
    for name, (field, convert, default) in SETTINGS.items():
        text = env.get(name, default)
        try:
            values[field] = convert(text)
        except ValueError as exc:
            shown = "<hidden>" if name == "PHANTOM_AUTH_TOKEN" else repr(text)
            problems.append(f"{name}={shown}: {exc}")
    if values.get("log_level") not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(f"PHANTOM_LOG_LEVEL={values.get('log_level')!r}: use DEBUG, INFO, WARNING or ERROR")
    problems += _contradictions(values) if not problems else []
    problems += _read_token_file(values) if not problems else []
    if problems:
        raise ConfigError("bad configuration: " + "; ".join(problems))
    unknown = set(overrides) - set(values)
    if unknown:
        raise ConfigError(f"unknown config override(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    return Config(**values)
