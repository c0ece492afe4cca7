"""Where a request finds its app's broker client, Config and Telemetry (on ``app.extensions``)."""
from __future__ import annotations

import time
from typing import Any

from flask import Flask, current_app

from control.prometheus import Telemetry
from protocol import CommandError
from protocol.client import BrokerClient
from protocol.config import Config

KEY = "phantomlink"


def install(app: Flask, config: Config, client: BrokerClient, telemetry: Telemetry) -> None:
    app.extensions[KEY] = {"config": config, "broker": client, "telemetry": telemetry}


def broker() -> BrokerClient:
    return current_app.extensions[KEY]["broker"]


def config() -> Config:
    return current_app.extensions[KEY]["config"]


def telemetry() -> Telemetry:
    return current_app.extensions[KEY]["telemetry"]


def call(cmd: str, **args: Any) -> Any:
    """Send one command to the broker; its CommandError becomes the HTTP error (control.errors).

    The round trip is observed in phantomlink_broker_command_duration_seconds (outcome `ok` or
    the error code)."""
    started, outcome = time.perf_counter(), "ok"
    try:
        return broker().request(cmd, args)
    except CommandError as exc:
        outcome = exc.code.value
        raise
    finally:
        telemetry().observe("phantomlink_broker_command_duration_seconds",
                            time.perf_counter() - started, cmd, outcome)
