"""The front door's nginx configuration: configs/nginx.conf with its @{name} values filled in."""
from __future__ import annotations

import os
import string
from pathlib import Path

from protocol.config import REPO_ROOT, Config

TEMPLATE = REPO_ROOT / "configs" / "nginx.conf"


class _Template(string.Template):
    delimiter = "@"         # nginx's own variables start with $


def _servers(addresses: tuple[str, ...]) -> str:
    return "\n".join(f"        server {a} max_fails=1 fail_timeout=5s;" for a in addresses)


def _listen(config: Config, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    lines = [f"        listen {shown}:{port};"]
    if config.tls_cert is not None and config.tls_key is not None:
        lines += [f"        listen {shown}:{config.tls_port} ssl;",
                  "        http2 on;",
                  f"        ssl_certificate {config.tls_cert};",
                  f"        ssl_certificate_key {config.tls_key};",
                  "        ssl_protocols TLSv1.2 TLSv1.3;"]
    return "\n".join(lines)


def render(config: Config, host: str, port: int, runtime: Path) -> str:
    """The configuration nginx runs on: listening on ``host:port``, temp files under ``runtime``."""
    control, bridges = config.upstreams()
    # As root, nginx's workers would switch to `nobody`, who cannot read a private checkout.
    user = "user root root;" if os.geteuid() == 0 else ""
    return _Template(TEMPLATE.read_text()).substitute(
        runtime=runtime, user=user, listen=_listen(config, host, port),
        control_servers=_servers(control), ws_servers=_servers(bridges))
