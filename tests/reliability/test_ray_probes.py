"""Issue 31, item 11: every Ray curate starts has Ray's usage stats off (the library that asks
the cloud metadata address and metadata.google.internal to name the cloud): in the driver, in
its workers and in every process the local Ray starts, the dashboard's head (whose usage
module reports) included.

A fresh process starts Ray as ``curate run`` does (``start_ray``) and reports what Ray's own
code decides in the driver and in a worker task, and the environment of every process of
that Ray (GCS, raylet, agents, workers) as the kernel shows it."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, os, ray
from curate.core.ray_session import start_ray
start_ray(None, 1)
from ray._common.usage import usage_lib


def descendants(root):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parents.items() if p == pid]
        found += kids
        todo += kids
    return found


def environ(pid):
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def cmdline(pid):
    return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")

@ray.remote(num_cpus=0)
def in_worker():
    from ray._common.usage import usage_lib
    return usage_lib.usage_stats_enabled()

worker = ray.get(in_worker.remote())
envs, commands = {}, []
for pid in descendants(os.getpid()):
    try:
        seen_env = environ(pid)
        if "PATH" not in seen_env:
            continue  # setproctitle (ray::DashboardAgent, ...) wrote its title over the environment block
        envs[f"{pid} {cmdline(pid)[:200]}"] = seen_env.get("RAY_USAGE_STATS_ENABLED")
        commands.append(cmdline(pid))
    except OSError:
        pass
print(json.dumps({"driver": usage_lib.usage_stats_enabled(), "worker": worker, "processes": envs}))
ray.shutdown()
"""


def test_ray_started_by_curate_has_usage_stats_off_in_every_process(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/config.json of the user's deciding it
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["driver"] is False and seen["worker"] is False
    names = " ".join(seen["processes"])
    assert "gcs_server" in names and "raylet" in names and "dashboard" in names, names
    assert set(seen["processes"].values()) == {"0"}, [p for p, v in seen["processes"].items() if v != "0"]


JOIN = r"""
import json, sys, ray
from curate.core.ray_session import start_ray
start_ray(sys.argv[1], None)
from ray._common.usage import usage_lib

@ray.remote(num_cpus=0)
def in_worker():
    from ray._common.usage import usage_lib
    return usage_lib.usage_stats_enabled()

print(json.dumps({"driver": usage_lib.usage_stats_enabled(), "worker": ray.get(in_worker.remote())}))
ray.shutdown()
"""


def test_a_run_joining_a_cluster_with_usage_stats_on_has_them_off_in_its_driver_and_workers(tmp_path):
    """A cluster started by someone else with usage stats on (RAY_USAGE_STATS_ENABLED=1): the
    curate driver and the workers of its job still have them off (Ray's own setting, through
    the job's runtime environment)."""
    import os

    from cluster import Cluster

    with Cluster(head_cpus=1, env={"RAY_USAGE_STATS_ENABLED": "1"}) as cluster:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")}
        env.update(HOME=str(tmp_path), RAY_AUTH_MODE="disabled")
        done = subprocess.run([sys.executable, "-c", JOIN, cluster.address], capture_output=True, text=True,
                              timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"driver": False, "worker": False}
