"""Model references, named exactly as their libraries name them, plus ``curate:NAME`` for
the tiny models this package ships (``curate/assets/models/NAME``).

Offline is normal: when a reference cannot be resolved, the error names it and says how
to pass a local directory instead.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from curate.core.suggest import did_you_mean

SHIPPED_PREFIX = "curate:"


class ModelReferenceError(ValueError):
    """A model reference that cannot be resolved or loaded; the message says what to do."""


def shipped_models_dir() -> Path:
    return Path(str(resources.files("curate.assets").joinpath("models")))


def shipped_model_path(name: str) -> Path:
    path = shipped_models_dir() / name
    if not path.is_dir():
        available = sorted(p.name for p in shipped_models_dir().iterdir() if p.is_dir()) if shipped_models_dir().is_dir() else []
        raise ModelReferenceError(f"{SHIPPED_PREFIX}{name}: no such shipped model"
                                  f"{did_you_mean(SHIPPED_PREFIX + name, [SHIPPED_PREFIX + a for a in available])}; "
                                  f"shipped: {available}")
    return path


# How long the start-up check waits for the hub's TCP port before calling it unreachable.
HUB_CONNECT_SECONDS = 3.0


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached: False at once under ``HF_HUB_OFFLINE``,
    else whether a TCP connection to its endpoint (``HF_ENDPOINT``) opens within
    HUB_CONNECT_SECONDS (tried once per process and endpoint), so that with no network a hub
    reference not in the local cache is refused at start, not after huggingface_hub's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return _connects(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


@functools.lru_cache(maxsize=4)
def _connects(url: str) -> bool:
    import socket

    endpoint = urlsplit(url)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), HUB_CONNECT_SECONDS).close()
    except OSError:
        return False
    return True


def cached_hub_models() -> list[str]:
    """The hub ids (``org/name``) of the models in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model")
    except Exception:  # noqa: BLE001 - no cache folder, or one it cannot read: no suggestions
        return []
