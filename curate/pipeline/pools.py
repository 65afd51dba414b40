"""Size the model stages' actor pools from the Ray cluster's resources.

Every model stage runs as a Ray Data actor pool (curate.pipeline.score). Ray Data starts
every pool up front, so pools that ask for more than the cluster has never start: a run on a
small machine would wait forever. A stage whose config gives no ``actors`` / ``num_cpus`` /
``num_gpus`` / ``threads`` gets them here, when the run starts and Ray's resources are known:

- **GPUs** are split between the model stages that leave ``num_gpus`` unset, in proportion
  to each stage's ``relative_cost`` (its model work per image, docs/scaling.md): one actor
  per whole GPU, at least one actor per stage; with fewer GPUs than stages, one actor per
  stage holding a fraction of a GPU (Ray schedules fractional GPUs).
- **CPUs** left after the explicit stages and ``LIGHT_TASK_CPUS`` (the read and write tasks
  that feed the pools must always fit) are split the same way. A CPU-only stage gets one
  actor per ``CPUS_PER_ACTOR`` cores of its share (torch's intra-op threads stop paying off
  beyond a few cores; more actors keep scaling), and a fraction of one CPU on a small
  machine. Ray only schedules fractions below 1, so a share above one CPU is whole CPUs.

Explicit settings are kept as given and counted first; ``check_fit`` still stops a run whose
pools cannot all be placed at once.
"""

from __future__ import annotations

import math
from curate.core.config import ConfigError
from curate.pipeline.score import TASK_CPUS
from curate.stages.base import BatchStage, Pool

# What the score step's light tasks (read shards, run light stages, write parts) reserve:
# one of them always fits beside the pools.
LIGHT_TASK_CPUS = TASK_CPUS
CPUS_PER_ACTOR = 4  # a CPU-only actor's torch threads; more cores than this make more actors
CPUS_PER_GPU_ACTOR = 4  # decode and preprocess beside each GPU actor, at most
MIN_FRACTION = 0.01  # Ray's smallest useful request; shares are floored to hundredths


def size_pools(stages: list[BatchStage], resources: dict[str, float]) -> dict[str, Pool]:
    """A Pool per model stage in ``stages`` (key -> Pool) for a cluster with ``resources``
    (``ray.cluster_resources()``: ``CPU``, ``GPU`` counts). Explicit config values are kept;
    the rest are sized as the module says. Raises nothing: ``check_fit`` judges the result."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    models = [s for s in stages if s.uses_model]
    on_gpu = [s for s in models if gpus > 0 and s.compute.num_gpus is None]
    gpu_plan = _gpu_plan(gpus - sum(_explicit(s, "num_gpus") for s in models), on_gpu)
    # CPUs: what the explicit pools and the light tasks leave; GPU actors take a few each
    # for decoding and preprocessing, the CPU-only stages share the rest by cost.
    left = cpus - sum(_explicit(s, "num_cpus") for s in models) - LIGHT_TASK_CPUS
    auto_cpu = [s for s in models if s.compute.num_cpus is None]
    gpu_actors = sum(gpu_plan[s][0] for s in auto_cpu if s in gpu_plan)
    per_gpu_actor = _ray_amount(min(CPUS_PER_GPU_ACTOR, left / gpu_actors)) if gpu_actors else 0.0
    cpu_shares = _split(left - per_gpu_actor * gpu_actors, [s for s in auto_cpu if s not in gpu_plan])
    pools = {}
    for stage in models:
        c = stage.compute
        if stage in gpu_plan:
            actors, num_gpus = gpu_plan[stage]
            num_cpus = c.num_cpus if c.num_cpus is not None else per_gpu_actor
        elif c.num_cpus is None:
            actors, num_cpus = _cpu_actors(cpu_shares[stage], c.actors)
            num_gpus = c.num_gpus or 0
        else:
            actors, num_cpus, num_gpus = c.actors or 1, c.num_cpus, c.num_gpus or 0
        pools[stage.key] = Pool(actors, num_cpus, num_gpus, c.threads or max(1, int(num_cpus)))
    return pools


def check_fit(pools: dict[str, Pool], resources: dict[str, float]) -> None:
    """ConfigError when ``pools`` need more CPUs or GPUs at once than ``resources`` has
    (Ray Data would wait for them forever), naming the pools and the keys to change."""
    wanted_cpu = sum(p.actors * p.num_cpus for p in pools.values()) + LIGHT_TASK_CPUS
    wanted_gpu = sum(p.actors * p.num_gpus for p in pools.values())
    have_cpu, have_gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    listed = ", ".join(f"{k}: {p.describe()}" for k, p in pools.items())
    if pools and wanted_cpu > have_cpu + 1e-9:
        raise ConfigError(
            f"the model stages need {wanted_cpu:g} CPUs at once ({listed}, + {LIGHT_TASK_CPUS:g} for reading and "
            f"writing) but Ray has {have_cpu:g}; lower <stage>.num_cpus or <stage>.actors, or leave them unset "
            "and curate sizes the pools to fit"
        )
    if wanted_gpu > have_gpu + 1e-9:
        raise ConfigError(
            f"the model stages need {wanted_gpu:g} GPUs at once ({listed}) but Ray has {have_gpu:g}; "
            "lower <stage>.num_gpus or <stage>.actors, or leave them unset and curate sizes the pools to fit"
        )


def _split(total: float, stages: list[BatchStage]) -> dict[BatchStage, float]:
    """``total`` shared among ``stages`` in proportion to their ``relative_cost``."""
    weight = sum(s.relative_cost for s in stages)
    if total <= 0 or not weight:
        return {s: 0.0 for s in stages}
    return {s: total * s.relative_cost / weight for s in stages}


def _gpu_plan(free: float, stages: list[BatchStage]) -> dict[BatchStage, tuple[int, float]]:
    """(actors, GPUs per actor) per stage for ``free`` GPUs. With a whole GPU for each stage:
    whole GPUs, at least one each, the rest by cost (largest remainder), one actor per GPU.
    With fewer: one actor per stage holding its share's fraction. A stage's configured
    ``actors`` split its share between them."""
    if not stages:
        return {}
    whole = int(free)
    if whole >= len(stages) and all(s.compute.actors is None for s in stages):
        spare = _split(whole - len(stages), stages)
        counts = {s: 1 + int(spare[s]) for s in stages}
        for s in sorted(stages, key=lambda s: spare[s] - int(spare[s]), reverse=True)[:whole - sum(counts.values())]:
            counts[s] += 1
        return {s: (n, 1.0) for s, n in counts.items()}
    shares = _split(free, stages)
    plan = {}
    for s in stages:
        actors = s.compute.actors or 1
        plan[s] = (actors, min(1.0, _ray_amount(shares[s] / actors)))
    return plan


def _cpu_actors(share: float, actors: int | None) -> tuple[int, float]:
    """(actors, CPUs per actor) for a CPU share; Ray schedules fractions only below 1."""
    if actors is None:
        actors = max(1, int(share // CPUS_PER_ACTOR))
    return actors, _ray_amount(share / actors)


def _ray_amount(x: float) -> float:
    """``x`` CPUs or GPUs as Ray takes them: whole from one up, else hundredths (at least
    MIN_FRACTION), always rounded down so the pools fit."""
    return float(int(x)) if x >= 1 else max(MIN_FRACTION, _floor(x))


def _floor(x: float) -> float:
    return math.floor(max(0.0, x) * 100) / 100


def _explicit(stage: BatchStage, resource: str) -> float:
    """What a stage's explicit ``num_cpus`` / ``num_gpus`` reserve over its actors."""
    c = stage.compute
    value = getattr(c, resource)
    return 0.0 if not value else (c.actors or 1) * value


def assign_pools(stages: list[BatchStage], resources: dict[str, float], check: bool = True) -> dict[str, Pool]:
    """Size the model stages' pools for ``resources``, check that they fit (``check``; a
    cluster that autoscales is not checked), and set each stage's ``pool``. Returns them."""
    pools = size_pools(stages, resources)
    if check:
        check_fit(pools, resources)
    for stage in stages:
        if stage.key in pools:
            stage.pool = pools[stage.key]
    return pools
