"""A real multi-node Ray cluster on this machine, for the tests where distribution is the point.

The head node is started with ``ray start --head``; each worker node with ``ray start
--address`` inside its own mount namespace (``unshare -m``, root only) with a private /tmp,
so it cannot see the driver's local files: a run must read and write the run directory (a
bucket) for real. Every node uses its own Ray temp folder, so ``ray.init()`` elsewhere on the
machine never finds and joins this cluster. The processes are stopped by their process
groups, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from s3_server import free_port

RAY = str(Path(sys.executable).parent / "ray")


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(extra or {})}  # extra wins
    env.pop("RAY_ADDRESS", None)
    return env


class Cluster:
    """``with Cluster(head_cpus=1) as c: c.add_worker(cpus=2)``; ``c.address`` for ``--address``."""

    def __init__(self, head_cpus: float = 1, env: dict | None = None):
        self.head_cpus, self.extra_env = head_cpus, env or {}
        self.tag = uuid.uuid4().hex[:8]
        self.temp = Path(f"/tmp/ray-curate-{self.tag}")  # short: Ray's socket paths have a length limit
        self.port = free_port()
        self.workers: list[subprocess.Popen] = []
        self.head: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "Cluster":
        self.head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
             f"--temp-dir={self.temp}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"],
            env=_env(self.extra_env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_for_nodes(1)
        return self

    def add_worker(self, cpus: float, private: bool = True) -> subprocess.Popen:
        """A worker node; ``private``: in its own mount namespace, where /tmp is a fresh tmpfs
        only it sees (otherwise it shares this machine's files, as on a shared filesystem)."""
        temp = "/tmp/ray-w" if private else f"{self.temp}-w{len(self.workers)}"
        start = (f"{RAY} start --block --address={self.address} --num-cpus={cpus} --node-ip-address=127.0.0.1 "
                 f"--temp-dir={temp}")
        if private:
            if os.geteuid() != 0 or shutil.which("unshare") is None:
                pytest.skip("a worker node in its own mount namespace needs root and unshare (CI containers run as root)")
            command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs -o size=4g tmpfs /tmp && exec {start}"]
        else:
            command = start.split()
        worker = subprocess.Popen(command, env=_env(self.extra_env), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        self.workers.append(worker)
        self._wait_for_nodes(1 + sum(1 for w in self.workers if w.poll() is None))
        return worker

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL a node's whole process group (its raylet and its workers)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def alive_nodes(self) -> list[dict]:
        out = subprocess.run([sys.executable, "-c", (
            "import json, ray; ray.init(address=%r, logging_level='error'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))") % self.address],
            capture_output=True, text=True, env=_env(self.extra_env), timeout=120)
        import json

        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []

    def _wait_for_nodes(self, n: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.alive_nodes()) >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {timeout} s")

    def worker_logs(self, worker: subprocess.Popen) -> list[str]:
        """The Ray worker-process logs of a worker node, read through its own mount namespace
        (``/proc/<pid>/root``): which jobs ran tasks there."""
        for pid in _group_pids(worker.pid):
            found = sorted(p.name for p in Path(f"/proc/{pid}/root/tmp/ray-w").glob("session_*/logs/worker-*.out"))
            if found:
                return found
        return []

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            self.kill(worker)
        if self.head is not None:
            self.kill(self.head)
        for folder in [self.temp, *Path(self.temp.parent).glob(self.temp.name + "-w*")]:
            shutil.rmtree(folder, ignore_errors=True)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return sorted(pids)
