"""Fault injection and the accounting invariant, shared by the reliability tests."""

from __future__ import annotations

import glob
import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from e2e import read_manifest


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised name


def _descends_from(pid: int, root: int) -> bool:
    while pid and pid != 1:
        if pid == root:
            return True
        pid = _parent(pid)
    return False


def ray_processes(*fragments: str, root: int | None = None) -> list[int]:
    """PIDs of Ray workers (titled ``ray::...``) whose title has every fragment and that
    descend from ``root`` (default: this process, which started the local Ray). Other Ray
    clusters on the machine are never touched."""
    root = root or os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if title.startswith("ray::") and all(f in title for f in fragments) and _descends_from(int(entry.name), root):
            pids.append(int(entry.name))
    return pids


class KillOnce(threading.Thread):
    """SIGKILLs the Ray workers whose title has all ``fragments`` the first time they exist
    and ``ready()`` holds (a worker's title ends in ``.submit`` while it runs a batch)."""

    def __init__(self, *fragments: str, ready=lambda: True, root: int | None = None):
        super().__init__(daemon=True)
        self.fragments, self.ready, self.root = fragments, ready, root
        self.killed: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and not self.killed:
            pids = ray_processes(*self.fragments, root=self.root)
            if pids and self.ready():
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                self.killed = pids
            time.sleep(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join()


def scored_parts(run_root: str) -> int:
    return len(glob.glob(f"{run_root}/scored/*/*.parquet"))  # scored/<download shard>/part-*.parquet


def output_sample_ids(run_root: str) -> dict[str, list[str]]:
    """sample_ids found in the output, per format, reading every shard file present."""
    found: dict[str, list[str]] = {"webdataset": [], "parquet": []}
    for path in sorted(glob.glob(f"{run_root}/output/*.tar")):
        with tarfile.open(path) as tar:  # keys are the sample_id's digits; the record names the sample_id
            found["webdataset"] += [json.loads(tar.extractfile(m).read())["sample_id"]
                                    for m in tar.getmembers() if m.name.endswith(".json")]
    for path in sorted(glob.glob(f"{run_root}/output/*.parquet")):
        found["parquet"] += pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
    return found


def assert_accounting(n_input_rows: int, run_root: str) -> list[dict]:
    """Input rows == manifest rows, sample_ids unique, every kept sample in exactly one
    output shard per format and nothing else in the output. Returns the manifest rows."""
    manifest = read_manifest(run_root).to_pylist()
    ids = [m["sample_id"] for m in manifest]
    assert len(manifest) == n_input_rows, (len(manifest), n_input_rows)
    assert len(set(ids)) == len(ids)
    assert all(m["status"] in ("kept", "download_failed", "filtered", "duplicate", "blocked") for m in manifest)
    assert all(m["reason"] for m in manifest if m["status"] != "kept")
    kept = sorted(m["sample_id"] for m in manifest if m["status"] == "kept")
    for fmt, found in output_sample_ids(run_root).items():
        assert sorted(found) == kept, f"{fmt}: output != kept samples"
    index = json.loads(Path(run_root, "output", "index.json").read_text())
    assert index["total"] == len(kept)
    return manifest


def tar_names(run_root: str) -> list[str]:
    names = []
    for path in sorted(glob.glob(f"{run_root}/output/*.tar")):
        with tarfile.open(fileobj=io.BytesIO(Path(path).read_bytes())) as tar:
            names += [m.name for m in tar.getmembers()]
    return names
