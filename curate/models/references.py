"""Model references, named exactly as their libraries name them, plus ``curate:NAME`` for
the tiny models this package ships (``curate/assets/models/NAME``).

Offline is normal: when a reference cannot be resolved, the error names it and says how
to pass a local directory instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED_PREFIX = "curate:"


class ModelReferenceError(ValueError):
    """A model reference that cannot be resolved or loaded; the message says what to do."""


def shipped_models_dir() -> Path:
    return Path(str(resources.files("curate.assets").joinpath("models")))


def shipped_model_path(name: str) -> Path:
    path = shipped_models_dir() / name
    if not path.is_dir():
        available = sorted(p.name for p in shipped_models_dir().iterdir() if p.is_dir()) if shipped_models_dir().is_dir() else []
        raise ModelReferenceError(f"{SHIPPED_PREFIX}{name}: no such shipped model; shipped: {available}")
    return path
