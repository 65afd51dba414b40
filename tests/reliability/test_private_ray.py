"""Without an address, `curate run` starts its own Ray: it never joins another Ray instance
running on the machine (``ray.init()``'s default joins the cluster a ``ray start``
recorded in Ray's temp dir).

The other instance is a real local cluster (``ray.cluster_utils.Cluster``, which records
itself exactly as ``ray start --head`` does) under a private ``RAY_TMPDIR``, so only the
processes of this test can see it: nobody else's Ray on the machine is joined or touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from corpus import image_bytes
from curate.synth.http_server import CorpusServer, Route

OTHER_CLUSTER = """
import sys, ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
ray.init(address=cluster.address)
print(cluster.address, flush=True)
sys.stdin.readline()                                   # the test is done with its runs
print(len(ray._private.state.jobs()), flush=True)      # drivers that ever connected
ray.shutdown()
cluster.shutdown()
"""


def test_curate_run_starts_its_own_ray_beside_another_instance(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/crt-")  # short: Ray's socket paths live under it
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RAY_ADDRESS", None)
    other = subprocess.Popen([sys.executable, "-c", OTHER_CLUSTER], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        address = other.stdout.readline().strip()
        assert address, "the other Ray instance did not start"
        recorded = Path(ray_tmp, "ray", "ray_current_cluster")
        assert recorded.read_text().strip() == address  # what ray.init() without an address would join

        with CorpusServer({"/a.jpg": Route(image_bytes("JPEG", seed=7))}) as server:
            pq.write_table(pa.table({"url": [server.url("/a.jpg")], "caption": ["a small red house"]}), tmp_path / "in.parquet")
            base = ["curate", "run", str(Path(__file__).with_name("minimal.yaml")),
                    "--set", f"input.path={tmp_path / 'in.parquet'}", "--set", "download.allow_private_hosts=true",
                    "--set", "report.enabled=false", "--set", "filters.min_side=16", "--set", "download.image_size=32"]
            # The case: ray.num_cpus with another instance up died with a ValueError.
            with_cpus = subprocess.run(base + ["--out", str(tmp_path / "a"), "--set", "ray.num_cpus=2"],
                                       capture_output=True, text=True, env=env, timeout=600)
            assert with_cpus.returncode == 0, with_cpus.stdout[-2000:] + with_cpus.stderr[-3000:]
            plain = subprocess.run(base + ["--out", str(tmp_path / "b")], capture_output=True, text=True, env=env,
                                   timeout=600)
            assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-3000:]

        sessions = sorted(p.name for p in Path(ray_tmp, "ray").glob("session_2*"))
        assert len(sessions) == 3, sessions  # the other instance's, and one of its own per run
        other.stdin.write("done\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "1"  # only the other instance's own driver ever joined it
    finally:
        if other.poll() is None:
            other.stdin.close()
            try:
                other.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(other.pid, 9)
                other.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
