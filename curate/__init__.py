"""curate: turn web image-text data into clean, deduplicated, well-captioned training shards."""

import os

# Defaults for the libraries underneath, set before any of them is imported. A user's
# own setting wins (setdefault).
# - albumentations (imported by img2dataset) phones home for a version check at import.
# - Ray 2.60 turns on token auth for local clusters and writes ~/.ray/auth_token.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

__version__ = "0.1.0"

# The Python API (curate.api, docs/python-api.md), resolved on first use (PEP 562): `import
# curate` stays light (no torch, Ray or DuckDB until a function is called), and the root
# package, the bottom layer, imports nothing above it.
_API = ("run", "query", "open_run", "export", "evaluate", "Run")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("curate.api"), name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
