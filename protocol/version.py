"""The project's one version string (pyproject.toml's `version` must match; a test checks it)."""

__version__ = "0.3.0"
