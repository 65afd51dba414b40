"""The first hour of a LAION user (issue #30): their columns kept, errors that say what to
do, a run that says why it was blocked, and no surprise captions.

In-process unit tests of the functions where they suffice; one small real run (real Ray,
real img2dataset, a real HTTP server on 127.0.0.1) for the columns that must reach the
manifest and both shard formats.
"""

from __future__ import annotations

import json
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.config import ConfigError, load_config
from curate.core.inputs import InputError, InputFile, read_input_file

# -- input.keep_columns ---------------------------------------------------------------------


def _laion(path, urls, captions) -> None:
    """A LAION-400M-style Parquet (its column names, its types)."""
    n = len(urls)
    pq.write_table(pa.table({
        "SAMPLE_ID": pa.array(range(100, 100 + n), pa.int64()),
        "URL": urls, "TEXT": captions,
        "HEIGHT": pa.array([80] * n, pa.int64()), "WIDTH": pa.array([96] * n, pa.int64()),
        "LICENSE": ["?" if i % 2 else "creativecommons.org/licenses/by/4.0" for i in range(n)],
        "NSFW": ["UNLIKELY"] * n,
        "similarity": pa.array([0.31 + i / 100 for i in range(n)], pa.float64()),
    }), path)


def _cfg(tmp_path, *settings):
    return load_config(None, [f"input.path={tmp_path / 'laion.parquet'}", "input.url_col=URL", "input.caption_col=TEXT",
                              *settings], out=str(tmp_path / "run"))


def test_keep_columns_reads_the_named_columns_with_their_types(tmp_path):
    _laion(tmp_path / "laion.parquet", ["http://a/1.jpg", "http://a/2.jpg"], ["a red bike", "a blue car"])
    cfg = _cfg(tmp_path, "input.keep_columns=[LICENSE, similarity]")
    rows = read_input_file(InputFile(0, str(tmp_path / "laion.parquet"), 0), cfg.input)
    assert rows.column_names[-2:] == ["LICENSE", "similarity"]
    assert rows.schema.field("similarity").type == pa.float64()
    assert rows.column("LICENSE").to_pylist() == ["creativecommons.org/licenses/by/4.0", "?"]


def test_a_kept_column_not_in_the_input_names_the_close_one(tmp_path):
    _laion(tmp_path / "laion.parquet", ["http://a/1.jpg"], ["a red bike"])
    cfg = _cfg(tmp_path, "input.keep_columns=[LICENCE]")
    with pytest.raises(InputError, match=r"input.keep_columns: column 'LICENCE' not found in .*\(did you mean 'LICENSE'\?\)"):
        read_input_file(InputFile(0, str(tmp_path / "laion.parquet"), 0), cfg.input)


def test_a_url_column_named_in_another_case_is_suggested(tmp_path):
    _laion(tmp_path / "laion.parquet", ["http://a/1.jpg"], ["a red bike"])
    cfg = load_config(None, [f"input.path={tmp_path / 'laion.parquet'}", "input.caption_col=TEXT"], out=str(tmp_path / "r"))
    with pytest.raises(InputError, match=r"input.url_col: column 'url' not found in .*\(did you mean 'URL'\?\)"):
        read_input_file(InputFile(0, str(tmp_path / "laion.parquet"), 0), cfg.input)


def test_keep_columns_clashing_with_curates_columns_is_refused_at_start(tmp_path):
    from curate.flow.plan import make_plan

    cfg = _cfg(tmp_path, "input.keep_columns=[LICENSE, WIDTH, uid]")
    with pytest.raises(ConfigError) as refused:
        make_plan(cfg).check(models=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("input.keep_columns: 'WIDTH', 'uid' would clash with curate's own columns")
    assert "input_<name>" in message
    make_plan(_cfg(tmp_path, "input.keep_columns=[LICENSE, NSFW]")).check(models=False)  # no clash: fine


def test_keep_columns_is_for_pairs_documents_have_their_own(tmp_path):
    with pytest.raises(ConfigError, match=r"input.keep_columns: for documents, use input.documents.keep_columns"):
        load_config(None, [f"input.path={tmp_path}/d.jsonl", "input.kind=documents", "input.keep_columns=[page]"],
                    out=str(tmp_path / "r"))


# -- float captions -------------------------------------------------------------------------


def test_a_float_nan_caption_column_reads_as_no_caption(tmp_path):
    """pandas writes an empty text column as float NaN: the caption is missing, not "NaN"."""
    pq.write_table(pa.table({"url": ["http://a/1.jpg", "http://a/2.jpg"],
                             "caption": pa.array([float("nan"), 2.5], pa.float64())}), tmp_path / "in.parquet")
    cfg = load_config(None, [f"input.path={tmp_path / 'in.parquet'}"], out=str(tmp_path / "r"))
    rows = read_input_file(InputFile(0, str(tmp_path / "in.parquet"), 0), cfg.input)
    assert rows.column("caption").to_pylist() == [None, "2.5"]


# -- a real run: the columns reach the manifest and the shards ---------------------------------


@pytest.fixture(scope="module")
def laion_run(tmp_path_factory, ray_session):
    from corpus import image_bytes
    from curate.pipeline.runner import run_pipeline
    from curate.synth.http_server import CorpusServer, Route
    from e2e import FAST_SETTINGS

    tmp = tmp_path_factory.mktemp("laion")
    routes = {f"/{i}.jpg": Route(image_bytes("JPEG", seed=40 + i)) for i in range(3)}
    with CorpusServer(routes) as server:
        # a 404 and a repeated URL (its row is the first's sample: same_url_as) among them
        _laion(tmp / "laion.parquet", [server.url(f"/{i}.jpg") for i in range(3)] + [server.url("/missing.jpg"),
                                                                                     server.url("/0.jpg")],
               ["a photo of a red bicycle leaning on a wall", "a green door in a white stone house",
                "a small brown dog running on the beach", "a cat asleep on a sofa", "a red bike by a wall"])
        cfg = _cfg(tmp, *FAST_SETTINGS, "dedupe.enabled=false", "report.enabled=false", "input.keep_columns=all")
        run_pipeline(cfg)
    return tmp / "run"


def test_keep_columns_all_reach_the_manifest_with_their_types(laion_run):
    from e2e import read_manifest

    manifest = read_manifest(str(laion_run))
    schema = manifest.schema
    assert schema.field("LICENSE").type == pa.string() and schema.field("similarity").type == pa.float64()
    # named like curate's own columns (width, sample_id): carried as input_<name>
    assert schema.field("input_WIDTH").type == pa.int64() and schema.field("input_SAMPLE_ID").type == pa.int64()
    assert "URL" not in schema.names and "TEXT" not in schema.names  # they are url and caption
    rows = manifest.to_pylist()
    assert [r["input_SAMPLE_ID"] for r in rows] == [100, 101, 102, 103, 104]
    assert [r["status"] for r in rows] == ["kept", "kept", "kept", "download_failed", "duplicate"]
    # every row carries its own columns, kept or not
    assert [r["LICENSE"] for r in rows[3:]] == ["?", "creativecommons.org/licenses/by/4.0"]


def test_keep_columns_reach_each_shard_samples_json_and_parquet_row(laion_run):
    output = laion_run / "output"
    with tarfile.open(next(output.glob("*.tar"))) as tar:
        records = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert [(r["LICENSE"], r["input_SAMPLE_ID"], r["NSFW"]) for r in records] == [
        ("creativecommons.org/licenses/by/4.0", 100, "UNLIKELY"), ("?", 101, "UNLIKELY"),
        ("creativecommons.org/licenses/by/4.0", 102, "UNLIKELY")]
    table = pq.read_table(next(output.glob("*.parquet")))
    assert table.schema.field("similarity").type == pa.float64()
    assert table.column("similarity").to_pylist() == pytest.approx([0.31, 0.32, 0.33])


# -- a run blocked whole says why, and can be started afresh ----------------------------------


def test_hint_names_the_cause_and_the_key_when_most_rows_end_for_one_reason(tmp_path):
    from curate.pipeline.hints import run_hint

    cfg = load_config(None, [f"input.path={tmp_path}/x.parquet"], out=str(tmp_path / "run"))
    blocked = {"rows_in": 298, "reasons": [{"status": "blocked", "reason": "private_host", "count": 298}]}
    hint = run_hint(blocked, cfg, str(tmp_path / "run"))
    assert hint.startswith("298 of 298 rows are blocked as private_host: ")
    assert "download.allow_private_hosts: true" in hint and "--fresh" in hint
    slow = {"rows_in": 10, "reasons": [{"status": "download_failed", "reason": "timeout", "count": 7},
                                       {"status": "download_failed", "reason": "http_404", "count": 3}]}
    assert f"curate retry {tmp_path / 'run'} --set download.timeout=30" in run_hint(slow, cfg, str(tmp_path / "run"))
    mixed = {"rows_in": 10, "reasons": [{"status": "download_failed", "reason": "timeout", "count": 4},
                                        {"status": "filtered", "reason": "caption_empty", "count": 4}]}
    assert run_hint(mixed, cfg, "RUN") is None  # no single reason ended half of the rows


def test_fresh_removes_a_curate_run_and_nothing_else(tmp_path):
    from curate.pipeline.fresh import remove_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "config.yaml").write_text("just: a file of mine\n")
    with pytest.raises(ConfigError, match=r"--fresh: .*config.yaml is not a curate run's config .*nothing was removed"):
        remove_run(str(run))
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]
    cfg = load_config(None, [f"input.path={tmp_path}/x.parquet"], out=str(run))
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "state.json").write_text("{}")
    (run / "rows").mkdir()
    (run / "rows" / "part-00000-0000.parquet").write_bytes(b"x")
    assert remove_run(str(run)) == ["config.yaml", "state.json", "rows"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert remove_run(str(tmp_path / "nothing")) == []


def test_a_local_corpus_blocked_whole_says_what_to_do_and_reruns_with_fresh(tmp_path, ray_session, cli_env):
    from rich.console import Console

    from corpus import image_bytes
    from curate.pipeline.runner import run_pipeline
    from curate.synth.http_server import CorpusServer, Route
    from e2e import curate_cli, read_manifest

    routes = {f"/{i}.jpg": Route(image_bytes("JPEG", seed=60 + i)) for i in range(3)}
    with CorpusServer(routes) as server:
        pq.write_table(pa.table({"url": [server.url(f"/{i}.jpg") for i in range(3)],
                                 "caption": ["a red bicycle on a wall", "a green door of a house", "a dog on a beach"]}),
                       tmp_path / "in.parquet")
        settings = [f"input.path={tmp_path / 'in.parquet'}", "dedupe.enabled=false", "report.enabled=false",
                    "download.timeout=2"]
        console = Console(record=True, width=200)
        result = run_pipeline(load_config(None, settings, out=str(tmp_path / "run")), console)
        assert result.summary["statuses"] == {"blocked": 3}
        shown = console.export_text()
        assert "hint: 3 of 3 rows are blocked as private_host" in shown and "download.allow_private_hosts" in shown
        assert result.summary["hint"].startswith("3 of 3 rows are blocked as private_host")

        # the corrected setting on the same --out: refused, with the exact command that starts afresh
        (tmp_path / "c.yaml").write_text("download: {allow_private_hosts: true}\n")
        args = ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                *(x for s in settings for x in ("--set", s))]
        refused = curate_cli(args, cli_env, ok=False)
        assert refused.returncode == 2
        assert "download.allow_private_hosts: False -> True" in refused.stderr
        assert f"to start it afresh: curate {' '.join(args)} --fresh" in " ".join(refused.stderr.split())
        result = run_pipeline(load_config(tmp_path / "c.yaml", settings, out=str(tmp_path / "run")), console, fresh=True)
    assert result.summary["statuses"] == {"kept": 3}
    assert [r["status"] for r in read_manifest(str(tmp_path / "run")).to_pylist()] == ["kept"] * 3


# -- Ctrl-C stops cleanly and says how to resume; a resume says where it stands ----------------


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_says_how_to_resume_and_the_resume_says_what_was_committed(tmp_path, cli_env, signame):
    """SIGINT (Ctrl-C, taken by img2dataset's handler during the download) and SIGTERM (which
    Ray's core worker would turn into an abort) stop the run the same way; the resume is
    checked once."""
    import signal
    import subprocess
    import threading
    import time

    from corpus import image_bytes
    from curate.synth.http_server import CorpusServer, Route
    from e2e import FAST_SETTINGS, curate_cli

    n = 24
    routes = {f"/{i}.jpg": Route(image_bytes("JPEG", seed=80 + i)) for i in range(n)}
    with CorpusServer(routes, latency=0.5) as server:
        pq.write_table(pa.table({"url": [server.url(f"/{i}.jpg") for i in range(n)],
                                 "caption": [f"a photo of a thing number {i}" for i in range(n)]}), tmp_path / "in.parquet")
        (tmp_path / "c.yaml").write_text(f"input: {{path: {tmp_path / 'in.parquet'}}}\n")
        args = ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                *(x for s in [*FAST_SETTINGS, "download.threads=2", "download.shard_size=4", "dedupe.enabled=false",
                              "report.enabled=false"] for x in ("--set", s))]
        errors = open(tmp_path / "stderr.txt", "w")
        process = subprocess.Popen(["curate", *args], env=cli_env, stdout=subprocess.PIPE, stderr=errors, text=True)
        lines, stopped = [], threading.Event()

        def follow():
            for line in process.stdout:
                lines.append(line)
                if "download" in line and not stopped.is_set():
                    stopped.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert stopped.wait(600), "".join(lines)
        # a committed download shard or two, then Ctrl-C
        while not list((tmp_path / "run" / "downloaded").glob("*_stats.json")) and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(getattr(signal, signame))
        reader.join(300)  # its output to the end
        process.wait(60)
        errors.close()
        stderr = (tmp_path / "stderr.txt").read_text()
        shown = "".join(lines)
        assert process.returncode == 128 + getattr(signal, signame), shown + stderr
        assert f"stopped ({signame}): the work committed so far is kept; run the same command again to resume" in shown
        assert f"to resume: curate {' '.join(args)}" in " ".join(stderr.split())
        if signame != "SIGINT":
            return
        resumed = curate_cli(args, cli_env)
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("resume: already committed"))
    assert line.startswith(f"resume: already committed: prepared {n} rows, downloaded ")
    assert "left: download (" in line and line.endswith("manifest, output")


# -- the shipped tiny models have a config; near-dedupe knows their scale ------------------------


def test_tiny_models_config_has_the_demos_models_and_thresholds(repo_root, tmp_path):
    import yaml

    from curate.flow.plan import make_plan

    demo = yaml.safe_load((repo_root / "curate" / "assets" / "demo.yaml").read_text())
    cfg = load_config(repo_root / "configs" / "tiny-models.yaml", [f"input.path={tmp_path}/x.parquet"],
                      out=str(tmp_path / "run"))
    for section, keys in {"clip": ("model", "min_score"), "itm": ("model", "min_prob"),
                          "caption": ("model", "num_captions", "mode", "top_p"),
                          "capfilt": ("mode", "max_synthetic", "synthetic_min_prob"), "dedupe": ("threshold", "keep")}.items():
        for key in keys:
            assert getattr(getattr(cfg, section), key) == demo[section][key], f"{section}.{key}"
    make_plan(cfg).check()  # the shipped models resolve offline
    assert "configs/tiny-models.yaml" in (repo_root / "README.md").read_text()


def test_the_near_dedupe_default_follows_the_clip_model():
    from curate.dedupe.threshold import DEFAULT_THRESHOLD, default_threshold

    assert default_threshold("curate:tiny-clip") == 0.99
    assert default_threshold("ViT-B-32") == DEFAULT_THRESHOLD == 0.95
    assert default_threshold(None) == DEFAULT_THRESHOLD


# -- fail fast offline, close matches ---------------------------------------------------------


def test_an_unknown_hub_model_offline_is_refused_at_once_with_close_matches(monkeypatch):
    from curate.models import blip, references
    from curate.models.references import ModelReferenceError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert references.hub_reachable() is False
    with pytest.raises(ModelReferenceError) as refused:
        blip.check("Salesforce/blip-itm-base-cocox", "itm.model", "itm")
    message = str(refused.value)
    assert message.startswith("itm.model 'Salesforce/blip-itm-base-cocox': cannot read its config: the hub is unreachable")
    assert "(did you mean 'Salesforce/blip-itm-base-coco'" in message
    assert blip.check("curate:tiny-blip-itm", "itm.model", "itm")  # a local model needs no hub


def test_unknown_clip_and_shipped_names_suggest_close_ones():
    import open_clip

    from curate.models import clip
    from curate.models.references import ModelReferenceError

    assert clip.model_names() == sorted(open_clip.list_models())
    with pytest.raises(ModelReferenceError, match=r"clip.model 'ViT-B-32x': not an open_clip model name \(did you mean 'ViT-B-32'"):
        clip.resolve("ViT-B-32x", None)
    with pytest.raises(ModelReferenceError, match=r"clip.pretrained 'laion2b_s34b_b79': not a tag of ViT-B-32 \(did you mean 'laion2b_s34b_b79k'"):
        clip.resolve("ViT-B-32", "laion2b_s34b_b79")
    with pytest.raises(ModelReferenceError, match=r"curate:tiny-clipp: no such shipped model \(did you mean 'curate:tiny-clip'"):
        clip.resolve("curate:tiny-clipp", None)


@pytest.mark.parametrize("key,suggested", [("download.timout=3", "download.timout: unknown key (did you mean 'timeout'"),
                                           ("dedup.threshold=0.9", "dedup: unknown key (did you mean 'dedupe'?)"),
                                           ("input.urlcol=URL", "input.urlcol: unknown key (did you mean 'url_col'?)")])
def test_unknown_config_keys_suggest_close_ones(tmp_path, key, suggested):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"input.path={tmp_path}/x.parquet", key], out=str(tmp_path / "r"))
    assert suggested in str(refused.value)


# -- polish ------------------------------------------------------------------------------------


def test_version_short_help_and_query_help_names_every_public_view():
    from typer.testing import CliRunner

    from curate import __version__
    from curate.cli import app
    from curate.core.views import PUBLIC_VIEWS

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"curate {__version__}"
    short = runner.invoke(app, ["-h"])
    assert short.exit_code == 0 and "Usage" in short.output
    query_help = runner.invoke(app, ["query", "-h"], terminal_width=200)
    assert query_help.exit_code == 0
    assert all(view in query_help.output for view in PUBLIC_VIEWS)


def test_allowed_key_lists_show_sections_as_wildcards_and_refilter_says_before_and_after():
    from curate.pipeline.runner import key_patterns, refilter_change

    assert key_patterns(("clip.min_score", "dedupe.")) == ["clip.min_score", "dedupe.*"]
    before = {"kept": 120, "rows_in": 298, "statuses": {"kept": 120, "filtered": 100, "blocked": 78}}
    after = {"kept": 97, "rows_in": 298, "statuses": {"kept": 97, "filtered": 123, "blocked": 78}}
    assert refilter_change(before, after) == "refilter: kept 120 -> 97 of 298 rows (filtered 100 -> 123)"


def test_the_report_names_the_dedupe_threshold_a_run_used(tmp_path):
    from curate.core.rundir import RunDir
    from curate.report.build import _facts

    tiny = _facts(RunDir(str(tmp_path)), {"clip": {"model": "curate:tiny-clip"}, "dedupe": {"threshold": None}}, [], None)
    assert "dedupe threshold <b>0.99</b> (the default for this CLIP model)" in tiny
    real = _facts(RunDir(str(tmp_path)), {"clip": {"model": "ViT-B-32"}, "dedupe": {}}, [], None)
    assert "dedupe threshold <b>0.95</b> (the default for this CLIP model)" in real
    assert "dedupe threshold <b>0.97</b>" in _facts(RunDir(str(tmp_path)), {"dedupe": {"threshold": 0.97}}, [], None)


def test_a_long_caption_is_clamped_on_its_card_and_whole_in_its_tooltip():
    import html as stdlib_html
    import re

    from curate.report.html import CSS, card

    caption = " ".join(f"word{i}" for i in range(300))
    shown = card({"sample_id": "00000-0000000001", "url": "http://a/1.jpg", "caption": caption}, None, [])
    title = re.search(r'<p class="cap" title="([^"]*)">', shown).group(1)
    assert stdlib_html.unescape(title) == caption
    rule = re.search(r"\.card \.cap \{([^}]*)\}", CSS).group(1)
    assert "-webkit-line-clamp:6" in rule and "overflow:hidden" in rule


def test_open_run_lists_only_the_public_views(laion_run):
    import curate
    from curate.core.views import PUBLIC_VIEWS

    views = curate.open_run(laion_run).views
    assert "manifest" in views and "hosts" in views
    assert set(views) <= set(PUBLIC_VIEWS)  # not host_shards, output_index...


# -- one progress display ---------------------------------------------------------------------


def test_img2dataset_banner_lines_are_dropped_and_other_lines_pass(capsys):
    import img2dataset.reader  # noqa: F401 - the module that prints the per-file banner

    from curate.download.download import _without_banner

    reader = sys.modules["img2dataset.reader"]
    with _without_banner():
        reader.print("Sharding file number 1 of 6 called /x.parquet")
        reader.print("File sharded in 1 shards")
        reader.print("retrying to write to file due to error:", "disk full")
    assert capsys.readouterr().out == "retrying to write to file due to error: disk full\n"
    assert "print" not in vars(reader)  # the builtin again after the download


def test_model_pools_are_built_without_rays_deprecation_warning_and_other_warnings_still_show(ray_session, tmp_path):
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    from curate.core.rundir import RunDir
    from curate.flow.plan import make_plan
    from curate.pipeline import score
    from curate.stages.base import Pool

    plan = make_plan(load_config(None, [f"input.path={tmp_path}/x.parquet", "clip.model=curate:tiny-clip"],
                                 out=str(tmp_path / "run")))
    for stage in plan.batch:
        if stage.uses_model:
            stage.pool = Pool(actors=1, num_cpus=1, num_gpus=0, threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score.build_dataset(plan, RunDir(str(tmp_path / "run")), [str(tmp_path / "00000.parquet")])
        with score._bounded_retries_accepted():
            warnings.warn("a real one", UserWarning)
    assert not [w for w in caught if issubclass(w.category, RayDeprecationWarning)]
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == ["a real one"]
