"""Start or join Ray: a private local instance by default, a cluster only when named by
``ray.address`` (``--address``) or ``RAY_ADDRESS``."""

from __future__ import annotations

import os

# Ray's usage-stats library reports to Anyscale and, to name the cloud, asks the cloud metadata
# address (169.254.169.254) and metadata.google.internal at every start; a pipeline that
# promises to reach no private address turns it off (Ray's own setting, read by the driver and
# by every process the local Ray starts: GCS, raylet, dashboard agent, workers).
RAY_PRIVACY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def start_ray(address: str | None, num_cpus: int | None, env: dict[str, str] | None = None) -> None:
    """``env``: variables every Ray worker needs too (the storage endpoint: img2dataset's and
    the shard writers' fsspec clients read it from the environment)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(RAY_PRIVACY_ENV)  # before ray.init: the processes it starts inherit it
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {**RAY_PRIVACY_ENV, **(env or {})}}
    if address:
        ray.init(address=address, logging_level="warning", runtime_env=runtime_env)
    else:
        # address="local": ray.init() with no address joins whatever cluster a `ray start`
        # on this machine recorded in Ray's temp dir (and then refuses num_cpus); a run
        # that was not given an address must never land on someone else's cluster. No
        # dashboard: its head module is where the usage reporting runs.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning",
                 runtime_env=runtime_env)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # Resume and exact output depend on sample_ids, not on block order; don't pay for order.
    ctx.execution_options.preserve_order = False


def check_run_directory(root: str, shared_filesystem: bool) -> None:
    """On a Ray cluster of several nodes, every worker reads and writes the run directory
    itself: a local path there is another folder on each node. ConfigError unless it is a
    bucket or ``storage.shared_filesystem`` says it is mounted on every node."""
    import ray

    from curate.core import storage
    from curate.core.config import ConfigError

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and not storage.is_remote(root) and not shared_filesystem:
        raise ConfigError(
            f"output.path {root!r} is a local folder, but the Ray cluster has {len(nodes)} nodes: each would write "
            "its own copy. Use a bucket (s3://..., gs://...) as the run directory, or set "
            "storage.shared_filesystem: true if this path is mounted on every node"
        )
