"""The container files validate with the tools this machine has (no Docker engine runs here):
hadolint on the Dockerfile, the compose-spec JSON schema on compose.yaml, `caddy validate` on
both Caddyfiles; and compose.yaml runs every Procfile process as a service with a health check
and a restart policy, behind a TLS front door."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from processes import REPO_ROOT

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
    for package in ("protocol", "broker", "control", "bridges", "frontdoor", "configs"):
        assert f"COPY {package}/ {package}/" in text, package


def test_compose_file_matches_the_compose_spec():
    done = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_process_is_a_service_with_health_check_and_restart_policy(compose):
    services = compose["services"]
    commands = {" ".join(s["command"]) for s in services.values()}
    for name, line in PROCFILE.items():
        module = line.split("python -m ", 1)[1].strip()
        if name == "door":
            assert any(c.startswith("caddy run") for c in commands), "the door runs Caddy itself"
        else:
            assert f"python -m {module}" in commands, f"Procfile's {name} has no service"
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_front_door_has_tls_and_several_websocket_bridges(compose, tmp_path):
    door = compose["services"]["door"]
    assert "443:443" in door["ports"] and "80:80" in door["ports"]
    bridges = door["environment"]["FRONTDOOR_WS"].split()
    assert len(bridges) >= 2
    for address in bridges:
        assert compose["services"][address.split(":")[0]]["command"][-1] == "bridges.ws"
    assert door["environment"]["FRONTDOOR_CONTROL"].split(":")[0] in compose["services"]


@pytest.mark.parametrize("caddyfile, env", [
    ("configs/Caddyfile", {"FRONTDOOR_BIND": "127.0.0.1:0", "FRONTDOOR_WS": "127.0.0.1:8001",
                           "FRONTDOOR_CONTROL": "127.0.0.1:8002"}),
    ("configs/Caddyfile.tls", {"FRONTDOOR_WS": "ws-1:8001 ws-2:8001", "FRONTDOOR_CONTROL": "control:8002"}),
])
def test_caddyfiles_validate(caddyfile, env, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), **env}
    done = run(str(BIN / "caddy"), "validate", "--config", caddyfile, "--adapter", "caddyfile", env=env)
    assert done.returncode == 0 and "Valid configuration" in done.stdout + done.stderr, done.stderr[-2000:]
