"""`curate query` views and `curate stats` on a real finished run; every recipe of
docs/queries.md is run and its answer checked against the manifest computed in Python."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections import Counter
from urllib.parse import urlsplit

import numpy as np
import pytest

from curate.core import storage
from curate.core.views import open_views, run_query
from e2e import read_manifest
from finished_run import ROWS
from test_s3 import s3_server  # noqa: F401 - the S3-compatible server fixture


@pytest.fixture(scope="module")
def manifest(finished_run):  # noqa: F811
    return read_manifest(str(finished_run)).to_pylist()


def recipes(repo_root) -> dict[str, str]:
    """Title -> SQL of every recipe in docs/queries.md."""
    text = (repo_root / "docs" / "queries.md").read_text()
    recipes_part = text.split("## Recipes", 1)[1]
    found = re.findall(r"^### (.+?)\n.*?```sql\n(.*?)```", recipes_part, flags=re.S | re.M)
    return {title.strip(): sql for title, sql in found}


def host(url):
    return urlsplit(url).hostname if url else None


def _passes_but_clip(caption: dict, itm_min: float = 0.5) -> bool:
    reason = caption["reason"] or ""
    return (not reason or reason.startswith("clip_score_below:")) and caption["clip_score"] >= 0.3 and (
        caption["itm_prob"] is None or caption["itm_prob"] >= itm_min)


def check_clip_threshold(rows, run, manifest):
    eligible = [m for m in manifest if m["status"] in ("kept", "filtered") and m["captions"] is not None]
    assert rows == [{"would_keep": sum(any(_passes_but_clip(c) for c in m["captions"]) for m in eligible),
                     "kept_now": sum(m["status"] == "kept" for m in manifest)}]
    # the demo threshold is 0.5: 0.3 keeps at least as many (CapFilt already rescues most
    # samples whose original fails CLIP, with a synthetic caption)
    assert rows[0]["would_keep"] >= rows[0]["kept_now"]
    assert any((c["reason"] or "").startswith("clip_score_below:") for m in eligible for c in m["captions"])


def check_junk_captions(rows, run, manifest):
    junk = [m for m in manifest if (m["original_caption_reason"] or "").startswith("caption_junk:")]
    counts = Counter((m["caption"].strip().lower(), m["original_caption_reason"].split(":", 1)[1]) for m in junk)
    rescued = Counter((m["caption"].strip().lower(), m["original_caption_reason"].split(":", 1)[1])
                      for m in junk if m["status"] == "kept")
    want = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:20]
    assert rows and [(r["caption"], r["kind"], r["rows"], r["rescued"]) for r in rows] == [
        (c, k, n, rescued[(c, k)]) for (c, k), n in want]
    # with the demo's CapFilt, some junk alt-text is replaced by a synthetic caption
    assert any(r["rescued"] for r in rows)


def check_failing_domains(rows, run, manifest):
    failures = Counter(host(m["url"]) for m in manifest if m["status"] == "download_failed")
    totals = Counter(host(m["url"]) for m in manifest)
    assert rows and {r["domain"]: (r["failures"], r["rows"]) for r in rows} == {d: (n, totals[d]) for d, n in failures.items()}


def check_borderline(rows, run, manifest):
    kept = sorted((m for m in manifest if m["status"] == "kept"), key=lambda m: (m["clip_score"], m["sample_id"]))[:20]
    assert [r["sample_id"] for r in rows] == [m["sample_id"] for m in kept]


def check_survivors(rows, run, manifest):
    copies = Counter(m["reason"].split(":", 1)[1] for m in manifest if m["status"] == "duplicate")
    by_id = {m["sample_id"]: m for m in manifest}
    want = sorted(copies.items(), key=lambda item: (-item[1], item[0]))[:20]
    assert rows and [(r["survivor"], r["copies"]) for r in rows] == want
    assert all(by_id[r["survivor"]]["status"] == "kept" and r["survivor_caption"] == by_id[r["survivor"]]["caption_chosen"] for r in rows)


def check_similar(rows, run, manifest, anchor=None):
    scored = storage.read_parquet(storage.list_files(str(run / "scored"), ".parquet", recursive=True),
                                  ["sample_id", "clip_image_embedding"])
    emb = {s: np.array(e) for s, e in zip(*[scored.column(c).to_pylist() for c in scored.column_names]) if e is not None}
    a = emb[anchor]
    sims = sorted(((float(a @ e / np.linalg.norm(a) / np.linalg.norm(e)), s) for s, e in emb.items() if s != anchor),
                  key=lambda item: (-item[0], item[1]))[:10]
    assert [r["sample_id"] for r in rows] == [s for _, s in sims]
    assert [r["similarity"] for r in rows] == pytest.approx([v for v, _ in sims], abs=1e-5)


def check_output(rows, run, manifest):
    in_tars = 0
    for tar in sorted((run / "output").glob("*.tar")):
        with tarfile.open(tar) as handle:
            in_tars += sum(1 for name in handle.getnames() if name.endswith(".txt"))
    kept = sum(m["status"] == "kept" for m in manifest)
    assert rows == [{"in_shards": kept, "kept": kept}] and in_tars == kept


CHECKS = {
    "What would a CLIP threshold of 0.3 keep?": check_clip_threshold,
    "Most common junk captions": check_junk_captions,
    "Domains with the most download failures": check_failing_domains,
    "Kept samples closest to the threshold": check_borderline,
    "Survivors with the most duplicates": check_survivors,
    "Images most similar to a given sample": check_similar,
    "Do the output shards hold exactly the kept samples?": check_output,
}


def test_every_recipe_has_a_check(repo_root):
    assert set(recipes(repo_root)) == set(CHECKS)


@pytest.mark.parametrize("title", sorted(CHECKS))
def test_recipe_answers_match_the_manifest(title, repo_root, finished_run, manifest):  # noqa: F811
    sql = recipes(repo_root)[title]
    if title == "Images most similar to a given sample":
        # the recipe's sample id, swapped for one of this run that has an embedding
        anchor = next(m["sample_id"] for m in manifest if m["status"] == "duplicate")
        rows = run_query(str(finished_run), sql.replace("00000-0000000007", anchor)).to_pylist()
        return check_similar(rows, finished_run, manifest, anchor)
    CHECKS[title](run_query(str(finished_run), sql).to_pylist(), finished_run, manifest)


def test_views_scored_and_output(finished_run, manifest):  # noqa: F811
    scored = run_query(str(finished_run), "SELECT count(*) AS n, count(clip_image_embedding) AS emb, "
                                          "max(len(clip_image_embedding)) AS dim FROM scored").to_pylist()[0]
    downloaded = [m for m in manifest if m["status"] != "download_failed"]
    assert scored["n"] == len(manifest) - sum(m["status"] == "blocked" for m in manifest)
    assert scored["emb"] == sum(m["clip_score"] is not None for m in manifest) and scored["dim"] > 0
    assert len(downloaded) > 0
    index = json.loads((finished_run / "output" / "index.json").read_text())
    output = run_query(str(finished_run), "SELECT * FROM output ORDER BY name").to_pylist()
    assert output == [{"name": s["name"], "count": s["count"], "files": s["files"]} for s in index["shards"]]


def _quantile(values, q):
    return float(np.quantile(np.array(values, dtype=float), q))


def test_stats_command_json_matches_the_manifest(finished_run, manifest, cli_env):  # noqa: F811
    out = subprocess.run(["curate", "stats", str(finished_run), "--format", "json"],
                         capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    codes = Counter((m["status"], m["reason"].split(":", 1)[0] if m["reason"] else None) for m in manifest)
    assert {(r["status"], r["reason"]): r["rows"] for r in stats["status_reasons"]} == dict(codes)
    assert sum(r["rows"] for r in stats["status_reasons"]) == ROWS

    kept_scores = [m["clip_score"] for m in manifest if m["status"] == "kept"]
    row = next(r for r in stats["score_quantiles"] if r["measure"] == "clip_score" and r["status"] == "kept")
    assert row["n"] == len(kept_scores) and row["p50"] == pytest.approx(_quantile(kept_scores, 0.5), abs=1e-6)
    assert row["min"] == pytest.approx(min(kept_scores)) and row["p95"] == pytest.approx(_quantile(kept_scores, 0.95), abs=1e-6)

    words = [len(m["caption"].split()) if m["caption"] else 0 for m in manifest]
    row = next(r for r in stats["caption_length"] if r["measure"] == "caption_words" and r["status"] == "all")
    assert row["n"] == ROWS and row["p25"] == pytest.approx(_quantile(words, 0.25)) and row["max"] == max(words)

    hosts = Counter(host(m["url"]) for m in manifest)
    assert {r["host"]: r["rows"] for r in stats["top_domains"]} == dict(hosts)
    files = Counter(m["input_file"] for m in manifest)
    assert {r["input_file"]: (r["rows"], r["kept"]) for r in stats["kept_per_input_file"]} == {
        f: (n, sum(m["status"] == "kept" for m in manifest if m["input_file"] == f)) for f, n in files.items()}


def test_stats_table_and_errors(finished_run, cli_env, tmp_path):  # noqa: F811
    out = subprocess.run(["curate", "stats", str(finished_run)], capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0 and "rows per status and reason" in out.stdout and "top domains" in out.stdout
    # piped (`curate stats RUN | cat`): every column name and value in full, nothing cut to "…"
    from curate.report.stats import READY

    views = open_views(str(finished_run))
    names = {name for _, query in READY.values() for name in query(views).column_names}
    views.close()
    assert "…" not in out.stdout and all(name in out.stdout for name in names), names
    wide = subprocess.run(["curate", "query", str(finished_run), "SELECT sample_id AS a_column_name_far_wider_than_"
                           "eighty_columns_of_a_terminal_would_show, url, caption FROM manifest LIMIT 3"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    assert "a_column_name_far_wider_than_eighty_columns_of_a_terminal_would_show" in wide.stdout
    assert "…" not in wide.stdout
    missing = subprocess.run(["curate", "stats", str(tmp_path)], capture_output=True, text=True, env=cli_env, timeout=120)
    assert missing.returncode == 2 and "has no manifest" in " ".join(missing.stderr.split())
    bad = subprocess.run(["curate", "query", str(finished_run), "SELECT nope FROM manifest"],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert bad.returncode == 2 and "query failed" in " ".join(bad.stderr.split())


def test_query_stats_and_report_on_a_bucket_run(finished_run, s3_server, cli_env, manifest):  # noqa: F811
    import os

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # not an instance cached for another test's server
    fs.mkdir("curate-report")
    fs.put(str(finished_run) + "/", "curate-report/runs/r1/", recursive=True)
    env = dict(cli_env, **s3_server)
    run = "s3://curate-report/runs/r1"
    query = subprocess.run(["curate", "query", run, "SELECT (SELECT count(*) FROM manifest) AS m, (SELECT count(*) FROM scored) AS s, "
                            "(SELECT sum(count) FROM output) AS o", "--format", "json"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert query.returncode == 0, query.stderr
    kept = sum(m["status"] == "kept" for m in manifest)
    assert json.loads(query.stdout)[0]["m"] == ROWS and json.loads(query.stdout)[0]["o"] == kept
    stats = subprocess.run(["curate", "stats", run, "--format", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert stats.returncode == 0, stats.stderr
    assert sum(r["rows"] for r in json.loads(stats.stdout)["status_reasons"]) == ROWS
    report = subprocess.run(["curate", "report", run, "--samples", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr
    page = fs.cat_file("curate-report/runs/r1/report/index.html").decode()
    assert 'id="kept"' in page and page.count("data:image/jpeg;base64,") >= 4
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") not in report.stdout + report.stderr
