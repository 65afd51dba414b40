"""Shared fixtures: a real local Ray, a real HTTP server on 127.0.0.1 serving test corpora."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import curate  # noqa: F401 - sets the library environment defaults before ray is imported

sys.path.insert(0, str(Path(__file__).parent))

# The shared finished runs, defined here once: a session fixture imported into several test
# modules gets a definition (and a run) per module.
from finished_run import finished_documents_run, finished_run  # noqa: E402,F401


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser the report tests render pages in."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed (scripts/test.sh installs it with apt-get where apt is available)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env() -> dict:
    """Environment for `curate` subprocesses: this interpreter's venv first on PATH."""
    from e2e import cli_environment

    return cli_environment()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a real ENOSPC once it is full. Mounting needs root (CI containers run as
    root); elsewhere a test that needs it is skipped, saying why."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
