"""Headless Chromium for the report tests: load a page, read what its check script recorded
(``#report-check``: images loaded, script errors) and what the console said."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run_chromium(chromium: str, tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with its own profile; ``mode``: ``--dump-dom`` or ``--screenshot=...``."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", *mode, page.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def page_check(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes the page's check script set on ``#report-check``."""
    tag = re.search(r'<div id="report-check"[^>]*>', dom).group(0)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))


def assert_page_renders(chromium: str, tmp_path: Path, page: Path, sections) -> None:
    """The report ``page`` loads in headless Chromium: its check script ran, every image
    loaded, no script or console error, every section anchor present, and a 1280x2000
    screenshot that is not blank."""
    from PIL import Image

    out = run_chromium(chromium, tmp_path, page, "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    check = page_check(out.stdout)
    assert check["ready"] == "yes" and int(check["images-total"]) >= 10
    assert check["images-loaded"] == check["images-total"] and check["errors"] == "0"
    assert console_errors(out.stderr) == []
    for anchor in sections:
        assert f'id="{anchor}"' in out.stdout
    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path, page, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000) and image.getextrema()[0] < 100 < image.getextrema()[1]  # not blank
