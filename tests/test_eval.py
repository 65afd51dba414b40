"""`curate eval` (docs/eval.md) on a copy of the shared finished demo run: four selections made
from stored scores, two seeds each, a micro CLIP trained for two steps by open_clip_train,
evaluated zero-shot on a held-out classification folder and retrieval Parquet of the demo
world; the results Parquet, the eval_results view, the report section, resume, the CLI and
each refusal. Training is seconds a job (a micro model, 32 samples seen)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import curate
from curate.eval import selections as sel
from curate.eval.evalsets import read_classification, read_retrieval, write_synthetic_sets

SELECTIONS = ["run", "raw", "clip+itm", "capfilt"]
SEEDS = [0, 1]
MICRO = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def evalsets(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("evalsets")
    paths = write_synthetic_sets(out, seed=5, per_class=3)
    micro = out / "micro-clip.json"
    micro.write_text(json.dumps(MICRO))
    return {**paths, "model": str(micro)}


def _train(evalsets) -> dict:
    return dict(model=evalsets["model"], samples_seen=32, batch_size=16, warmup=1)


@pytest.fixture(scope="module")
def evaluated(finished_run, evalsets, tmp_path_factory):
    """A copy of the finished run (the shared fixture stays as other modules expect it), evaluated."""
    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(finished_run, run)
    result = curate.evaluate(run, SELECTIONS, seeds=SEEDS, zeroshot=[evalsets["shapes"]],
                             retrieval=[evalsets["scenes"]], progress="none", **_train(evalsets))
    return run, result


def test_four_selections_two_seeds_from_the_python_api(evaluated):
    run, result = evaluated
    assert sorted(result.trained) == sorted(f"{s}/{seed}" for s in SELECTIONS for seed in SEEDS)
    table = pq.read_table(result.results).to_pylist()
    metrics = {r["metric"] for r in table}
    assert "shapes/top1" in metrics and "scenes/image_to_text_R@5" in metrics and "scenes/text_to_image_R@1" in metrics
    assert len(table) == len(SELECTIONS) * len(SEEDS) * len(metrics)
    for row in table:
        assert 0.0 <= row["value"] <= 1.0
        assert row["samples_seen"] == 32  # DataComp's rule: the same budget for every selection
        assert row["times_seen"] == pytest.approx(32 / row["samples"])
        assert Path(row["checkpoint"]).is_file()
    sizes = {r["selection"]: r["samples"] for r in table}
    manifest = curate.query(run, "SELECT count(*) n FROM manifest WHERE status = 'kept'").to_pylist()[0]["n"]
    assert sizes["run"] == manifest
    assert sizes["raw"] >= max(sizes.values())  # raw: every downloaded unique image
    summary = result.summary["selections"]
    assert summary["raw"]["metrics"]["shapes/top1"]["diff"] is None
    for name in ("run", "clip+itm", "capfilt"):
        s = summary[name]["metrics"]["shapes/top1"]
        assert s["n"] == 2 and s["diff"] == pytest.approx(s["mean"] - summary["raw"]["metrics"]["shapes/top1"]["mean"])
        assert s["within_noise"] == (abs(s["diff"]) <= s["diff_sd"])
    job = json.loads((run / "eval" / "capfilt" / "1" / "metrics.json").read_text())
    assert job["seed"] == 1 and job["steps"] == 2 and "--dataset-resampled" in json.loads(
        (run / "eval" / "capfilt" / "1" / "config.json").read_text())["command"]


def _tar_captions(folder: Path) -> dict[str, str]:
    out = {}
    for tar in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(tar) as handle:
            for member in handle.getmembers():
                if member.name.endswith(".txt"):
                    out[member.name[:-4]] = handle.extractfile(member).read().decode()
    return out


def test_shards_hold_each_selection_with_its_training_caption(evaluated):
    run, _ = evaluated
    manifest = {r["sample_id"]: r for r in curate.query(
        run, "SELECT sample_id, caption, caption_chosen, status FROM manifest").to_pylist()}
    raw = _tar_captions(run / "eval" / "raw")
    assert raw and all(caption == (manifest[f"{key[:5]}-{key[5:]}"]["caption"] or "") for key, caption in raw.items())
    own = _tar_captions(run / "eval" / "run")
    kept = {k.replace("-", ""): r["caption_chosen"] for k, r in manifest.items() if r["status"] == "kept"}
    assert own == kept
    sizes = json.loads((run / "eval" / "capfilt" / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(_tar_captions(run / "eval" / "capfilt"))


def test_results_are_queryable_and_in_the_report(evaluated):
    from curate.report.build import write_report

    run, _ = evaluated
    rows = curate.query(run, "SELECT selection, count(DISTINCT seed) seeds FROM eval_results GROUP BY 1 ORDER BY 1")
    assert rows.to_pylist() == [{"selection": s, "seeds": 2} for s in sorted(SELECTIONS)]
    page = Path(write_report(str(run))).read_text()
    assert 'id="eval"' in page and "Training evaluation" in page and "capfilt" in page and "shapes/top1" in page


def test_a_finished_job_is_not_redone(evaluated, evalsets):
    run, _ = evaluated
    metrics = run / "eval" / "raw" / "0" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    (run / "eval" / "clip+itm" / "1" / "metrics.json").unlink()  # as if that job had been interrupted
    again = curate.evaluate(run, SELECTIONS, seeds=SEEDS, zeroshot=[evalsets["shapes"]],
                            retrieval=[evalsets["scenes"]], progress="none", **_train(evalsets))
    assert again.trained == ["clip+itm/1"]
    assert len(again.reused) == len(SELECTIONS) * len(SEEDS) - 1
    assert metrics.stat().st_mtime_ns == before
    assert pq.read_table(again.results).num_rows == pq.read_table(evaluated[1].results).num_rows


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", "eval", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_trains_a_set_variant_and_reuses_finished_jobs(evaluated, evalsets, cli_env):
    run, _ = evaluated
    args = [str(run), "-s", "raw", "--set", "clip.min_score=0.6", "--seeds", "0", "--zeroshot", str(evalsets["shapes"]),
            "--retrieval", str(evalsets["scenes"]), "--model", evalsets["model"], "--samples-seen", "32",
            "--batch-size", "16", "--warmup", "1"]
    done = _cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    assert "finished jobs reused: raw/0" in done.stdout
    assert "set:clip.min_score=0.6" in done.stdout and "shapes/top1" in done.stdout
    assert (run / "eval" / "set_clip.min_score_0.6" / "0" / "metrics.json").is_file()


def test_a_uid_file_selects_those_samples(evaluated, ray_session, tmp_path):
    run, _ = evaluated
    curate.export(run, "datacomp-uids", tmp_path)
    from curate.core.rundir import RunDir

    picked = sel.make_selection(RunDir(str(run)), sel.parse([f"uids:{tmp_path / 'uids.npy'}"])[0])
    kept = sel.make_selection(RunDir(str(run)), sel.parse(["run"])[0])
    raw_ids = set(sel.make_selection(RunDir(str(run)), sel.parse(["raw"])[0]).column("sample_id").to_pylist())
    assert set(picked.column("uid").to_pylist()) == {u for u, s in zip(kept.column("uid").to_pylist(),
                                                                    kept.column("sample_id").to_pylist()) if s in raw_ids}
    text = tmp_path / "uids.txt"
    text.write_text("\n".join(picked.column("uid").to_pylist()[:3]))
    assert sel.make_selection(RunDir(str(run)), sel.parse([f"uids:{text}"])[0]).num_rows == 3


def test_evaluation_sets_in_webdataset_and_with_classnames(evalsets, tmp_path):
    import webdataset as wds

    scenes = pq.read_table(evalsets["scenes"]).to_pylist()[:5]
    with wds.TarWriter(str(tmp_path / "pairs-000.tar")) as sink:
        for i, row in enumerate(scenes):
            sink.write({"__key__": f"{i:04d}", "jpg": row["image"]["bytes"], "txt": row["caption"]})
    pairs = read_retrieval(tmp_path)
    assert pairs.captions == [[r["caption"] for r in scenes][i:i + 1] for i in range(5)]
    shapes = read_classification(evalsets["shapes"])
    assert shapes.classnames == sorted(shapes.classnames) and len(shapes.images) == 3 * len(shapes.classnames)
    assert shapes.templates == ["a {}", "a photo of a {}"]


@pytest.mark.parametrize("case", ["unfinished", "unknown_selection", "missing_set", "no_classes", "no_set"])
def test_each_refusal_is_one_error_line(case, finished_run, evalsets, tmp_path, cli_env):
    run, extra = str(finished_run), ["--zeroshot", str(evalsets["shapes"])]
    if case == "unfinished":  # a run stopped before its summary (the last thing a run writes)
        run = str(tmp_path / "run")
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("summary.json", "eval"))
    elif case == "unknown_selection":
        extra += ["-s", "clip+aesthetic"]
    elif case == "missing_set":
        extra = ["--zeroshot", str(tmp_path / "nowhere")]
    elif case == "no_classes":
        (tmp_path / "empty").mkdir()
        extra = ["--zeroshot", str(tmp_path / "empty")]
    else:
        extra = []
    done = _cli([run, *extra], cli_env)
    expected = {"unfinished": "is not a finished curate run", "unknown_selection": "unknown selection 'clip+aesthetic'",
                "missing_set": "does not exist", "no_classes": "has no classes", "no_set": "no evaluation set"}[case]
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (Path(run) / "eval").exists()


def test_named_selections_are_the_demo_comparison_tables_variants():
    from curate.demo import VARIANTS

    names = {"clip": "CLIP only", "itm": "ITM only", "clip+itm": "CLIP + ITM", "capfilt": "CapFilt"}
    assert {name: sel.NAMED[name][0] for name in names} == {name: VARIANTS[v] for name, v in names.items()}
