"""SIGKILL of the driver during download: every process it started (Ray's GCS, raylet and
agents and workers, img2dataset's spawned logger and the multiprocessing resource
tracker, curate's own watchdog) ends soon after, instead of living on for minutes."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corpus import mixed_corpus
from curate.core.lifeline import descendants, start_time
from curate.synth.http_server import CorpusServer
from e2e import FAST_SETTINGS, corpus_rows, write_input

SETTINGS = FAST_SETTINGS + ["download.shard_size=5", "download.threads=2", "ray.num_cpus=2", "report.enabled=false"]
PATIENCE = 180  # seconds to wait for the helpers to end: a bound on a hang, not a measurement


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_helpers_end_when_the_driver_is_sigkilled(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with CorpusServer({c.path: c.route for c in mixed_corpus() if c.route}, latency=0.3) as server:
        write_input(corpus_rows(server) * 3, tmp_path / "in.parquet")
        out = str(tmp_path / "run")
        args = ["curate", "run", str(Path(__file__).with_name("minimal.yaml")), "--out", out,
                "--set", f"input.path={tmp_path / 'in.parquet'}"] + [a for s in SETTINGS for a in ("--set", s)]
        driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        seen: dict[int, int] = {}
        titles: dict[int, str] = {}
        try:
            deadline = time.time() + 600
            while driver.poll() is None and time.time() < deadline:
                for pid, started in descendants({driver.pid}).items():
                    seen.setdefault(pid, started)
                    titles.setdefault(pid, _title(pid))
                if glob.glob(f"{out}/downloaded/*_stats.json") and any("spawn_main" in t for t in titles.values()):
                    break  # downloading, with img2dataset's spawned logger up
                time.sleep(0.05)
            assert driver.poll() is None, "the run finished before the kill: the test proved nothing"
            os.kill(driver.pid, signal.SIGKILL)  # the driver only, not its process group
            driver.wait()

            kinds = " ".join(titles.values())
            for kind in ("raylet", "gcs_server", "dashboard/agent.py", "runtime_env/agent", "spawn_main", "resource_tracker"):
                assert kind in kinds, f"no {kind} among the driver's helpers: the test would prove less than it says"
            until = time.time() + PATIENCE
            alive = seen
            while time.time() < until:
                alive = {pid: s for pid, s in seen.items() if start_time(pid) == s}
                if not alive:
                    break
                time.sleep(0.5)
            assert not alive, "still running: " + "; ".join(titles[pid][:120] for pid in alive)
        finally:
            for pid, started in seen.items():  # never leave our own processes behind, even on failure
                if start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
