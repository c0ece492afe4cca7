"""Where a request finds its app's broker client and Config (both hang off ``app.extensions``)."""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from control.broker_client import BrokerClient
from protocol.config import Config

KEY = "phantomlink"


def install(app: Flask, config: Config, client: BrokerClient) -> None:
    app.extensions[KEY] = {"config": config, "broker": client}


def broker() -> BrokerClient:
    return current_app.extensions[KEY]["broker"]


def config() -> Config:
    return current_app.extensions[KEY]["config"]


def call(cmd: str, **args: Any) -> Any:
    """Send one command to the broker; its CommandError becomes the HTTP error (control.errors)."""
    return broker().request(cmd, args)
