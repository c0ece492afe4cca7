"""The container files validate with the tools this machine has (no Docker engine runs here):
hadolint on the Dockerfile, the compose-spec JSON schema on compose.yaml, `nginx -t` on the front
door's configuration as compose runs it (TLS, two bridges); and compose.yaml runs every Procfile
process as a service with a health check and a restart policy, behind a TLS front door."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from processes import REPO_ROOT
from stack_support import free_ports

BIN = Path(sys.executable).parent
PROCFILE = dict(line.split(":", 1) for line in (REPO_ROOT / "Procfile").read_text().splitlines() if line)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load((REPO_ROOT / "compose.yaml").read_text())


def test_dockerfile_passes_hadolint():
    done = run(str(BIN / "hadolint"), "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_copies_every_package_the_processes_run():
    text = (REPO_ROOT / "Dockerfile").read_text()
    for package in ("phantomlink", "protocol", "broker", "control", "bridges", "frontdoor", "configs"):
        assert f"COPY {package}/ {package}/" in text, package


def test_compose_file_matches_the_compose_spec():
    done = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_process_is_a_service_with_health_check_and_restart_policy(compose):
    services = compose["services"]
    commands = {" ".join(s["command"]) for s in services.values()}
    for name, line in PROCFILE.items():
        module = line.split("python -m ", 1)[1].strip()
        assert f"python -m {module}" in commands, f"Procfile's {name} has no service"
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name


def door_env(compose: dict) -> dict[str, str]:
    door = compose["services"]["door"]
    return {k: str(v) for k, v in door["environment"].items()}


def test_front_door_has_tls_and_several_websocket_bridges(compose):
    door, env = compose["services"]["door"], door_env(compose)
    assert env["PHANTOM_TLS_PORT"] == "443" and "443:443" in door["ports"]
    assert env["PHANTOM_TLS_CERT"].startswith("/certs/") and "./certs:/certs:ro" in door["volumes"]
    bridges = env["PHANTOM_WS_UPSTREAMS"].split(",")
    assert len(bridges) >= 2
    for address in bridges:
        assert compose["services"][address.split(":")[0]]["command"][-1] == "bridges.ws"
    assert env["PHANTOM_CONTROL_UPSTREAMS"].split(":")[0] in compose["services"]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate for localhost, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian's openssl package) to make a test certificate")
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    done = run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert))
    assert done.returncode == 0, done.stderr
    return cert, key


def test_front_door_configuration_as_compose_runs_it_passes_nginx_t(compose, tmp_path):
    from frontdoor.nginx import nginx_binary
    from frontdoor.nginx_conf import render
    from protocol.config import load_config

    cert, key = self_signed(tmp_path)
    plain, tls = free_ports(2)
    env = {**door_env(compose), "PHANTOM_TLS_CERT": str(cert), "PHANTOM_TLS_KEY": str(key),
           "PHANTOM_TLS_PORT": str(tls)}
    # The compose network's names do not resolve here: same upstream count, local addresses.
    for name in ("PHANTOM_CONTROL_UPSTREAMS", "PHANTOM_WS_UPSTREAMS"):
        env[name] = ",".join(f"127.0.0.{i + 1}:{a.split(':')[1]}" for i, a in enumerate(env[name].split(",")))
    env = {k: v for k, v in env.items() if k != "PHANTOM_PUBLIC_URL"}
    config = load_config(env)
    text = render(config, "127.0.0.1", plain, tmp_path)
    assert f"listen 127.0.0.1:{tls} ssl;" in text and text.count("server 127.0.0.") == 3
    (tmp_path / "nginx.conf").write_text(text)
    done = run(nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr")
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr[-2000:]
