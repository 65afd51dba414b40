"""A run directory in a bucket is held through a lease object: a real S3-compatible
server (moto) on 127.0.0.1, the real s3fs client, conditional writes as S3 does them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.core.lifeline import start_time
from curate.core.runlock import BucketLease, RunInUse, machine
from s3_server import s3_server  # noqa: F401 - the fixture

BUCKET = "curate-lease"


@pytest.fixture(scope="module")
def fs(s3_server):
    import s3fs

    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    filesystem.mkdir(BUCKET)
    return filesystem


def _lease_of(fs, root: str) -> dict:
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{root[len('s3://'):]}/_lock"))


def _plant(fs, root: str, **holder) -> None:
    """A lease object as another run would have left it."""
    body = {"owner": "someone-else", "pid": 4242, "pid_start": 1, "host": "other-host", "machine": "other-host x y",
            "started": "2026-01-01T00:00:00+00:00", "expires": time.time() + 600, **holder}
    fs.pipe_file(f"{root[len('s3://'):]}/_lock", json.dumps(body).encode())


def test_a_second_holder_is_refused_while_the_lease_is_renewed(fs):
    root = f"s3://{BUCKET}/renewed"
    first = BucketLease(root, lease_seconds=2.0, renew_seconds=0.3).acquire()
    try:
        expires = _lease_of(fs, root)["expires"]
        time.sleep(2.5)  # longer than the lease: only renewal keeps it
        assert _lease_of(fs, root)["expires"] > expires
        with pytest.raises(RunInUse, match=rf"in use by another curate run \(pid {os.getpid()} on "):
            BucketLease(root).acquire()
    finally:
        first.release()
    assert not fs.exists(f"{BUCKET}/renewed/_lock")
    BucketLease(root).acquire().release()  # free again


def test_a_live_lease_of_another_machine_is_respected(fs):
    root = f"s3://{BUCKET}/live"
    _plant(fs, root)
    with pytest.raises(RunInUse, match=r"pid 4242 on other-host.*its lease expires at"):
        BucketLease(root).acquire()
    assert _lease_of(fs, root)["owner"] == "someone-else"


def test_an_expired_lease_is_taken_over(fs):
    root = f"s3://{BUCKET}/expired"
    _plant(fs, root, expires=time.time() - 1)
    lease = BucketLease(root).acquire()
    try:
        assert _lease_of(fs, root)["owner"] == lease.owner
    finally:
        lease.release()


def test_a_lease_whose_holder_died_on_this_machine_is_taken_over_at_once(fs):
    root = f"s3://{BUCKET}/dead"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_time(gone.pid)
    gone.wait()
    _plant(fs, root, pid=gone.pid, pid_start=started, machine=machine())  # unexpired, but its process is gone
    lease = BucketLease(root).acquire()
    try:
        assert _lease_of(fs, root)["owner"] == lease.owner
    finally:
        lease.release()


def test_two_runs_racing_for_a_stale_lease_cannot_both_win(fs):
    """The take-over is a conditional write on the stale lease's ETag: one wins."""
    root = f"s3://{BUCKET}/race"
    for _ in range(3):
        _plant(fs, root, expires=time.time() - 1)
        won, refused, go = [], [], threading.Barrier(2)

        def take():
            lease = BucketLease(root)
            go.wait()
            try:
                won.append(lease.acquire())
            except RunInUse:
                refused.append(lease)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 1
        assert _lease_of(fs, root)["owner"] == won[0].owner
        won[0].release()


def test_a_holder_learns_that_its_lease_was_taken(fs):
    root = f"s3://{BUCKET}/lost"
    lost = threading.Event()
    lease = BucketLease(root, lease_seconds=5.0, renew_seconds=0.2, on_lost=lost.set).acquire()
    try:
        _plant(fs, root)  # another run overwrote it (as after a long pause of this one)
        assert lost.wait(30), "the renewing thread never noticed"
        assert "taken over by another curate run (pid 4242 on other-host" in lease.lost
    finally:
        lease.release()
    assert _lease_of(fs, root)["owner"] == "someone-else"  # not ours to remove


def test_curate_run_refuses_a_bucket_run_directory_in_use(fs, tmp_path):
    """The real CLI: refused before anything is written, saying who holds it."""
    root = f"s3://{BUCKET}/cli"
    _plant(fs, root)
    (tmp_path / "in.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a red bicycle\n")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["curate", "run", str(Path(__file__).with_name("minimal.yaml")), "--out", root,
                           "--set", f"input.path={tmp_path / 'in.csv'}", "--set", "input.format=csv"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "is in use by another curate run (pid 4242 on other-host" in done.stderr, done.stderr
    assert fs.ls(f"{BUCKET}/cli") == [f"{BUCKET}/cli/_lock"]  # nothing else written
