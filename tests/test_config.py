import pytest

from curate.core.config import ConfigError, apply_overrides, load_config, validate


def base(**extra):
    data = {"input": {"path": "in.parquet"}, "output": {"path": "/tmp/run"}}
    for key, value in extra.items():
        data.setdefault(key, {}).update(value)
    return data


def test_format_inferred_from_extension():
    assert validate(base()).input.format == "parquet"
    assert validate({"input": {"path": "x/*.tsv"}, "output": {"path": "r"}}).input.format == "tsv"


def test_uninferable_format_names_the_key():
    with pytest.raises(ConfigError, match="input.format"):
        validate({"input": {"path": "data.bin"}, "output": {"path": "r"}})


def test_bad_enum_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as info:
        validate(base(download={"resize_mode": "stretch"}))
    text = str(info.value)
    assert "download.resize_mode" in text and "'border'" in text and "'center_crop'" in text


def test_unknown_key_is_an_error_not_a_silent_default():
    with pytest.raises(ConfigError, match="filters.min_sid.*unknown key"):
        validate(base(filters={"min_sid": 10}))


def test_missing_required_key():
    with pytest.raises(ConfigError, match="output: required key is missing"):
        validate({"input": {"path": "a.csv"}})


def test_out_of_range_number():
    with pytest.raises(ConfigError, match="output.samples_per_shard"):
        validate(base(output={"samples_per_shard": 0}))


def test_overrides_parse_yaml_values():
    data = apply_overrides(base(), ["filters.min_side=32", "output.formats=[parquet]", "ray.address=null"])
    cfg = validate(data)
    assert cfg.filters.min_side == 32 and cfg.output.formats == ["parquet"] and cfg.ray.address is None


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(base(), ["filters.min_side"])


def test_load_config_file_and_out(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  path: a.jsonl\noutput:\n  path: x\n")
    cfg = load_config(path, ["download.image_size=128"], out=str(tmp_path / "run"))
    assert cfg.output.path == str(tmp_path / "run") and cfg.download.image_size == 128 and cfg.input.format == "jsonl"


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_example_configs_are_valid(repo_root):
    from curate.core.config import load_config

    assets = repo_root / "curate" / "assets"
    paths = sorted((repo_root / "configs").glob("*.yaml")) + [assets / "demo.yaml", assets / "demo-documents.yaml"]
    assert len(paths) >= 3
    for path in paths:
        # raises ConfigError naming the key if an example drifts from the schema (the demo's
        # input path is filled in by `curate demo`)
        cfg = load_config(path, ["input.format=parquet"])
        assert cfg.input.path and cfg.output.path


def _started_with(tmp_path, cfg, drop: str | None = None):
    """A run directory whose config.yaml is ``cfg``'s, minus the key ``drop`` (a key that an
    older version of curate did not have, so did not write)."""
    import yaml

    from curate.core.rundir import RunDir

    data = cfg.model_dump(mode="json")
    if drop:
        section, key = drop.split(".")
        del data[section][key]
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "run" / "state.json").write_text("{}")  # a run writes its state.json with its config
    return run


def test_a_run_resumes_when_only_keys_this_version_added_are_missing(tmp_path):
    from curate.pipeline.runner import _check_resumable

    cfg = validate(base(dedupe={"threshold": 0.97}))
    run = _started_with(tmp_path, cfg, drop="dedupe.method")
    _check_resumable(cfg, run, {})  # the stored config gets the new key's default: no change


def test_resuming_with_another_config_names_each_changed_key(tmp_path):
    from curate.pipeline.runner import _check_resumable

    run = _started_with(tmp_path, validate(base()))
    changed = validate(base(clip={"min_score": 0.3}, output={"formats": ["parquet"]}))
    with pytest.raises(ConfigError) as error:
        _check_resumable(changed, run, {})
    message = str(error.value)
    assert "clip.min_score: 'auto' -> 0.3" in message
    assert "output.formats: ['webdataset', 'parquet'] -> ['parquet']" in message
    assert "was started with another config" in message and "use a new --out" in message


def test_manifest_memory_limit_is_a_size():
    assert validate(base(manifest={"memory_limit": "4GB"})).manifest.memory_limit == "4GB"
    with pytest.raises(ConfigError, match="manifest.memory_limit"):
        validate(base(manifest={"memory_limit": "lots"}))


def test_judge_thresholds_take_auto_a_number_null_or_a_published_name():
    cfg = validate(base(clip={"model": "ViT-B-32"}, itm={"model": "x"}))
    assert cfg.clip.min_score == "auto" and cfg.itm.min_prob == 0.5  # CLIP calibrated on the run; ITM: BLIP's boundary
    assert validate(base(itm={"min_prob": "auto"})).itm.min_prob == "auto"
    assert validate(base(clip={"min_score": "laion-2b-en"})).clip.min_score == 0.28
    assert validate(base(clip={"min_score": "DataComp-B32"})).clip.min_score == 0.25
    assert validate(base(itm={"min_prob": "blip"})).itm.min_prob == 0.5
    assert validate(base(clip={"min_score": None})).clip.min_score is None
    assert validate(base(clip={"min_score": "0.3"})).clip.min_score == 0.3  # --set gives strings
    with pytest.raises(ConfigError, match="clip.min_score.*laion-400m"):
        validate(base(clip={"min_score": "laion"}))
    with pytest.raises(ConfigError):
        validate(base(clip={"min_score": 1.5}))
    # keep_fraction replaces an auto threshold; a number set with it is still refused
    assert validate(base(clip={"keep_fraction": 0.3})).clip.min_score is None
    with pytest.raises(ConfigError, match="not both"):
        validate(base(clip={"keep_fraction": 0.3, "min_score": 0.2}))
