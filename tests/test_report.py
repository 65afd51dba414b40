"""The HTML report of a real finished run: written at the end of `curate run`, self-contained,
its figures and samples agree with the manifest, optional sections (ITM, CapFilt) appear
when their columns do, and it renders in headless Chromium with every image loaded."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from curate.core.views import open_views
from curate.report import stats
from curate.report.build import write_report
from browser import assert_page_renders, console_errors, page_check, run_chromium
from e2e import read_manifest
from finished_run import ROWS

SECTIONS = ("summary", "funnel", "scores", "captions", "reasons", "kept", "filtered", "duplicates", "failures", "capfilt", "sources")


def page_of(run: Path) -> str:
    return (run / "report" / "index.html").read_text()


def test_run_writes_a_self_contained_report(finished_run):  # noqa: F811
    page = page_of(finished_run)
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
    # offline: no external script, stylesheet, image or font; images are data URIs, plots inline SVG
    assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert page.count("<svg") >= 4 and page.count('src="data:image/jpeg;base64,') >= 10
    # the demo runs CapFilt: ITM plots and original-vs-synthetic caption tables are there
    assert "ITM probability (<code>itm_prob</code>)" in page and '<div class="capfilt">' in page


def test_funnel_and_headline_agree_with_the_manifest(finished_run):  # noqa: F811
    manifest = read_manifest(str(finished_run)).to_pylist()
    status = lambda s: sum(m["status"] == s for m in manifest)  # noqa: E731
    con = open_views(str(finished_run))
    steps = dict(stats.funnel_steps(con))
    con.close()
    downloaded = ROWS - status("blocked") - status("download_failed")
    code = lambda m: (m["reason"] or "").split(":")[0]  # noqa: E731
    assert steps["rows in"] == ROWS and steps["downloaded"] == downloaded
    removed = lambda *prefixes: sum(m["status"] == "filtered" and code(m).startswith(prefixes) for m in manifest)  # noqa: E731
    assert steps["after image rules"] == downloaded - removed("image_", "aspect_")
    assert steps["after caption rules"] == downloaded - removed("image_", "aspect_", "caption_")
    # the demo runs CapFilt: the last filter is "no caption passed" (its captions' own reasons inside)
    assert steps["after CapFilt (a caption passed)"] == status("kept") + status("duplicate")
    assert list(steps)[-2] == "after CapFilt (a caption passed)"
    assert steps["kept (after dedupe)"] == status("kept")
    page = page_of(finished_run)
    for label in ("kept", "duplicate", "filtered"):
        assert re.search(rf'<div class="l">{label}</div><div class="n">{status(label):,}</div>', page)


def _decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_thumbnails_are_the_downloaded_images_of_their_samples(finished_run):  # noqa: F811
    page = page_of(finished_run)
    cards = re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)" alt="([^"]+)">', page)
    assert len(cards) >= 10
    manifest = {m["sample_id"]: m for m in read_manifest(str(finished_run)).to_pylist()}
    for uri, sample_id in cards[:5]:
        row = manifest[sample_id]
        table = pq.read_table(finished_run / "downloaded" / f"{row['download_shard']}.parquet",
                              filters=pc.field("key") == row["download_key"])
        original = Image.open(io.BytesIO(table.column("jpg")[0].as_py())).convert("RGB")
        thumb = _decode(uri).convert("RGB")
        assert thumb.size == original.size  # the demo's 64 px images are below the thumbnail size
        # the same picture, re-encoded: mean absolute pixel difference stays small
        assert np.abs(np.asarray(thumb, dtype=int) - np.asarray(original, dtype=int)).mean() < 8


def test_duplicate_groups_show_the_survivor_first(finished_run):  # noqa: F811
    page = page_of(finished_run)
    manifest = {m["sample_id"]: m for m in read_manifest(str(finished_run)).to_pylist()}
    section = re.search(r'<section id="duplicates">.*?</section>', page, flags=re.S).group(0)
    groups = section.split('<div class="dup">')[1:]
    assert groups
    for group in groups:
        ids = re.findall(r'<span class="mono">(\d{5}-\d{10})</span>', group)
        survivor, copies = ids[0], ids[1:]
        assert manifest[survivor]["status"] == "kept" and copies
        assert all(manifest[c]["reason"] == f"duplicate_of:{survivor}" for c in copies)


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("report", "output"))
    return dest


def _rewrite_manifest(run: Path, change) -> None:
    for part in sorted((run / "manifest").glob("*.parquet")):
        pq.write_table(change(pq.read_table(part)), part)


def test_capfilt_section_shows_the_runs_own_captions(finished_run):  # noqa: F811
    page = page_of(finished_run)
    texts = {c["text"]: c["source"] for m in read_manifest(str(finished_run)).to_pylist() for c in (m["captions"] or [])}
    blocks = re.findall(r'<div class="capfilt">(.*?)</div>\s*(?=<div class="capfilt">|</section>)', page, flags=re.S)
    assert blocks and '<tr class="chosen">' in page
    shown = [html.unescape(t) for b in blocks for t in re.findall(r"<td[^>]*>([^<]*[a-z][^<]*)</td>", b)]
    captions = [t for t in shown if t in texts]
    assert captions and "synthetic" in {texts[t] for t in captions}  # real synthetic captions of the run


def test_all_null_itm_column_gets_a_note(finished_run, tmp_path):  # noqa: F811
    run = _copy_run(finished_run, tmp_path / "run")
    _rewrite_manifest(run, lambda t: t.set_column(t.schema.get_field_index("itm_prob"), "itm_prob",
                                                    pa.nulls(t.num_rows, pa.float32())))
    page = Path(write_report(str(run), 4)).read_text()
    assert "No ITM probability in this run" in page
    assert "aesthetic" not in page.lower()  # the stage is off in this run: left out, not noted


def test_report_command(finished_run, tmp_path, cli_env):  # noqa: F811
    run = _copy_run(finished_run, tmp_path / "run")
    out = subprocess.run(["curate", "report", str(run), "--samples", "5"], capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    page = page_of(run)
    kept = re.search(r'<section id="kept">.*?</section>', page, flags=re.S).group(0)
    assert kept.count("<img ") == 5
    missing = subprocess.run(["curate", "report", str(tmp_path / "nothing")], capture_output=True, text=True, env=cli_env, timeout=120)
    assert missing.returncode == 2 and "has no manifest" in " ".join(missing.stderr.split())


def test_browser_catches_broken_pages(chromium, tmp_path):
    """The checks below can fail: a page with a broken image and a console error is caught."""
    from curate.report import html

    bad = tmp_path / "bad.html"
    bad.write_text(html.page("t", "s", "", [], ['<img src="data:image/jpeg;base64,AAAA">',
                                               "<script>console.error('boom'); undefined_call();</script>"], ""))
    out = run_chromium(chromium, tmp_path, bad, "--dump-dom")
    check = page_check(out.stdout)
    assert check["ready"] == "yes" and check["images-total"] == "1" and check["images-loaded"] == "0"
    assert check["errors"] == "1" and any("boom" in line for line in console_errors(out.stderr))


def test_report_renders_in_headless_chromium(chromium, finished_run, tmp_path):  # noqa: F811
    assert_page_renders(chromium, tmp_path, finished_run / "report" / "index.html", SECTIONS)
