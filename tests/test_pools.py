"""Actor pools sized from the cluster's resources when the config leaves them unset
(curate.pipeline.pools): they fit the machine, follow the stages' costs, and keep what the
config sets."""

from __future__ import annotations

import pytest

from curate.core.config import ConfigError, validate
from curate.flow.plan import make_plan
from curate.pipeline.pools import LIGHT_TASK_CPUS, check_fit, size_pools

MODELS = {"clip": {"model": "curate:tiny-clip"}, "itm": {"model": "curate:tiny-blip-itm"},
          "caption": {"model": "curate:tiny-blip-captioner"}}


def _stages(**sections):
    data = {"input": {"path": "in.parquet"}, "output": {"path": "run"}}
    for key, section in MODELS.items():
        data[key] = {**section, **sections.get(key, {})}
    for key, section in sections.items():
        data.setdefault(key, section)
    return make_plan(validate(data)).batch


def _cpus(pools) -> float:
    return sum(p.actors * p.num_cpus for p in pools.values()) + LIGHT_TASK_CPUS


def _gpus(pools) -> float:
    return sum(p.actors * p.num_gpus for p in pools.values())


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 64])
def test_cpu_pools_fit_and_follow_the_stages_costs(cpus):
    pools = size_pools(_stages(), {"CPU": cpus})
    check_fit(pools, {"CPU": cpus})
    assert _cpus(pools) <= cpus
    share = {k: p.actors * p.num_cpus for k, p in pools.items()}
    assert share["caption"] >= share["itm"] >= share["clip"] > 0
    for p in pools.values():  # Ray takes fractions only below one
        assert p.num_cpus < 1 or p.num_cpus == int(p.num_cpus)
        assert p.threads == max(1, int(p.num_cpus)) and p.num_gpus == 0


def test_a_big_cpu_machine_gets_more_actors_not_more_threads():
    pools = size_pools(_stages(), {"CPU": 64})
    assert pools["caption"].actors == 9 and pools["caption"].num_cpus == 4 and pools["caption"].threads == 4
    assert pools["itm"].actors == 5 and pools["clip"].actors == 1


def test_gpus_are_split_by_cost_one_actor_per_gpu():
    pools = size_pools(_stages(), {"CPU": 96, "GPU": 64})
    assert {k: p.actors for k, p in pools.items()} == {"caption": 36, "itm": 23, "clip": 5}  # 8 : 5 : 1
    assert all(p.num_gpus == 1 and p.num_cpus == 1 for p in pools.values())
    check_fit(pools, {"CPU": 96, "GPU": 64})


def test_fewer_gpus_than_stages_share_them_in_fractions():
    pools = size_pools(_stages(), {"CPU": 8, "GPU": 1})
    assert all(p.actors == 1 and 0 < p.num_gpus < 1 for p in pools.values())
    assert _gpus(pools) <= 1 and pools["caption"].num_gpus > pools["itm"].num_gpus > pools["clip"].num_gpus
    check_fit(pools, {"CPU": 8, "GPU": 1})


def test_explicit_settings_are_kept_and_the_rest_share_what_is_left():
    pools = size_pools(_stages(clip={"num_cpus": 1, "threads": 2}), {"CPU": 2})
    assert pools["clip"].num_cpus == 1 and pools["clip"].threads == 2 and pools["clip"].actors == 1
    assert _cpus(pools) <= 2
    pools = size_pools(_stages(caption={"actors": 2}), {"CPU": 8})
    assert pools["caption"].actors == 2 and _cpus(pools) <= 8


def test_the_aesthetic_head_keeps_its_quarter_cpu():
    pools = size_pools(_stages(aesthetic={"model": "curate:tiny-aesthetic"}), {"CPU": 2})
    assert pools["aesthetic"].num_cpus == 0.25 and _cpus(pools) <= 2


def test_explicit_pools_that_cannot_fit_are_refused_with_the_keys_to_change():
    stages = _stages(**{key: {"num_cpus": 1} for key in MODELS})
    with pytest.raises(ConfigError, match=r"need 3.5 CPUs at once .* but Ray has 2.*leave them unset"):
        check_fit(size_pools(stages, {"CPU": 2}), {"CPU": 2})
    with pytest.raises(ConfigError, match="need 3 GPUs"):
        stages = _stages(**{key: {"num_gpus": 1} for key in MODELS})
        check_fit(size_pools(stages, {"CPU": 8, "GPU": 2}), {"CPU": 8, "GPU": 2})


def test_ray_fractions_above_one_are_refused_in_the_config():
    with pytest.raises(ConfigError, match="fraction below 1 or a whole number"):
        _stages(clip={"num_cpus": 1.5})
