"""A real headless Chromium for tests and benchmarks (Playwright's Python API driving Debian's chromium).

``find_chromium()`` says where a Chromium is, or None; ``launch(playwright)`` starts it headless
in a fresh profile. Playwright cannot download its own browsers here, so it is pointed at the
system's (``/usr/bin/chromium`` on Debian; ``PLAYWRIGHT_CHROMIUM`` overrides).
"""
from __future__ import annotations

import os
import shutil
import tempfile

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}


def find_chromium() -> str | None:
    explicit = os.environ.get("PLAYWRIGHT_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def launch(playwright, executable: str):
    """A persistent context in a fresh user-data directory (removed with the context's owner)."""
    profile = tempfile.mkdtemp(prefix="phantomlink-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=executable, headless=True, args=ARGS, viewport=VIEWPORT)
    return context, profile


def close(context, profile: str) -> None:
    context.close()
    shutil.rmtree(profile, ignore_errors=True)
