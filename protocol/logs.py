"""Logging of every PhantomLink process: one line format on stderr, and READY lines no level hides.

Launchers and tests wait for the line ``READY <process> key=value ...`` (see tests/processes.py), so
it is logged through a logger pinned at INFO whatever PHANTOM_LOG_LEVEL says.
"""
from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr in the common format; called again once the configured level is known."""
    logging.basicConfig(level=level, stream=sys.stderr, format=FORMAT, force=True)


def ready_logger(process: str) -> logging.Logger:
    """The logger for ``process``'s READY line, always at INFO."""
    logger = logging.getLogger(f"{process}.ready")
    logger.setLevel(logging.INFO)
    return logger


def configure_process(log: logging.Logger):
    """Start-up common to every process: log in the common format, build the Config, apply its
    log level. Returns the Config, or None after logging the one-line reason it is bad."""
    from protocol.config import ConfigError, load_config

    setup_logging()
    try:
        config = load_config()
    except ConfigError as exc:
        log.error("%s", exc)
        return None
    setup_logging(config.log_level)
    return config
