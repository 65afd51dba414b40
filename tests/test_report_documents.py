"""The HTML report of a real finished documents run: written at the end of `curate run`,
self-contained, its funnels agree with the manifests, its documents are drawn in reading
order with every lost image's reason, and it renders in headless Chromium."""

from __future__ import annotations

import html
import re
from pathlib import Path


from browser import assert_page_renders
from curate.core import storage
from curate.core.rundir import RunDir
from curate.core.views import open_views
from curate.report import document_stats
from finished_run import DOCUMENTS

SECTIONS = ("summary", "funnel", "scores", "reasons", "documents", "dropped", "failures", "sources")


def _page(run: Path) -> str:
    return (run / "report" / "index.html").read_text()


def _manifests(run: Path) -> tuple[list[dict], list[dict]]:
    r = RunDir(str(run))
    read = lambda d: storage.read_parquet(storage.list_files(d, ".parquet")).sort_by("sample_id").to_pylist()  # noqa: E731
    return read(r.manifest), read(r.manifest_images)


def _articles(page: str, section: str) -> dict[str, str]:
    body = re.search(rf'<section id="{section}">.*?</section>', page, flags=re.S).group(0)
    return dict(re.findall(r'<article class="doc[^"]*" data-doc="([^"]+)">(.*?)</article>', body, flags=re.S))


def test_documents_run_writes_a_self_contained_report(finished_documents_run):  # noqa: F811
    page = _page(finished_documents_run)
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
    assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert page.count("<svg") >= 6 and page.count('src="data:image/jpeg;base64,') >= 10
    # ITM and the captioner ran: their plots and the synthetic captions are on the page
    assert "(<code>itm_prob</code>)" in page and "(<code>placed_itm_prob</code>)" in page
    assert 'data-kind="caption"' in page


def test_funnels_and_headline_agree_with_the_manifests(finished_documents_run):  # noqa: F811
    docs, images = _manifests(finished_documents_run)
    con = open_views(str(finished_documents_run))
    try:
        image_steps = dict(document_stats.image_funnel(con))
        doc_steps = document_stats.document_funnel(con, ["malformed_document", "too_few_words", "too_many_images",
                                                         "too_few_images", "image_text_ratio_above"])
    finally:
        con.close()
    code = lambda r: (r["reason"] or "").split(":")[0]  # noqa: E731
    status = lambda s: sum(im["status"] == s for im in images)  # noqa: E731
    assert image_steps["images in"] == len(images)
    assert image_steps["downloaded"] == len(images) - status("blocked") - status("download_failed")
    assert image_steps["after dedupe"] == image_steps["described by a text or captioned"] - status("duplicate")
    assert image_steps["kept (in a kept document)"] == status("kept")
    assert image_steps["placed"] - image_steps["kept (in a kept document)"] == \
        sum(code(im) == "document_dropped" for im in images)
    assert doc_steps[0] == ("documents in", DOCUMENTS) and doc_steps[-1] == ("kept", sum(d["status"] == "kept" for d in docs))
    # the planted galleries are caught by a document rule of the demo config
    assert any(label == "after too_many_images" or label == "after image_text_ratio_above" for label, _ in doc_steps)
    page = _page(finished_documents_run)
    for noun, rows in (("documents", docs), ("images", images)):
        kept = sum(r["status"] == "kept" for r in rows)
        assert re.search(rf'<div class="l">{noun} kept</div><div class="n">{kept:,}</div>', page)


def test_kept_documents_are_drawn_in_reading_order_with_what_they_lost(finished_documents_run):  # noqa: F811
    docs, images = _manifests(finished_documents_run)
    by_doc = {d["sample_id"]: d for d in docs}
    articles = _articles(_page(finished_documents_run), "documents")
    assert len(articles) >= 2
    drew_caption = False
    for doc_id, body in articles.items():
        doc = by_doc[doc_id]
        assert doc["status"] == "kept"
        seq = re.search(r'<div class="seq">(.*?)</div><div class="lost">|<div class="seq">(.*)$', body, flags=re.S)
        seq = seq.group(1) or seq.group(2)
        items = re.findall(r'data-kind="(text|caption|image)"(?: data-id="([^"]+)")?[^>]*>(.*?)</(?:p|figure)>', seq,
                           flags=re.S)
        want = []
        for text, image_id, source in zip(doc["texts"], doc["image_ids"], doc["text_sources"]):
            want.append(("image", image_id) if image_id else ("caption" if source == "synthetic" else "text", text))
        got = [(kind, image_id) if kind == "image" else (kind, html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()
                                                          .removeprefix("synthetic caption").strip())
               for kind, image_id, inner in items]
        assert got == want, doc_id  # the manifest's sequence, in order
        drew_caption |= any(kind == "caption" for kind, _ in got)
        lost = [im for im in images if im["doc_id"] == doc_id and im["status"] != "kept"]
        shown = re.findall(r'data-kind="image" data-id="([^"]+)".*?<span class="badge"[^>]*>([^<]+)</span>',
                           body.split('<div class="lost">', 1)[1] if lost else "", flags=re.S)
        assert [(i, html.unescape(r)) for i, r in shown] == [(im["sample_id"], im["reason"]) for im in lost]
    assert drew_caption, "a drawn document has a synthetic caption (the demo config captions unmatched images)"


def test_dropped_documents_show_each_image_with_its_reason(finished_documents_run):  # noqa: F811
    docs, images = _manifests(finished_documents_run)
    articles = _articles(_page(finished_documents_run), "dropped")
    assert articles
    for doc_id, body in articles.items():
        doc = next(d for d in docs if d["sample_id"] == doc_id)
        assert doc["status"] == "filtered" and html.escape(doc["reason"]) in body
        shown = dict(re.findall(r'data-kind="image" data-id="([^"]+)".*?<span class="badge"[^>]*>([^<]+)</span>',
                                body, flags=re.S))
        assert shown == {im["sample_id"]: im["reason"] for im in images if im["doc_id"] == doc_id}


def test_documents_report_renders_in_headless_chromium(chromium, finished_documents_run, tmp_path):  # noqa: F811
    assert_page_renders(chromium, tmp_path, finished_documents_run / "report" / "index.html", SECTIONS)


def test_report_redraws_a_documents_run_with_fewer_samples(finished_documents_run, tmp_path):  # noqa: F811
    import shutil

    from curate.report.build import write_report

    run = tmp_path / "run"
    shutil.copytree(finished_documents_run, run, ignore=shutil.ignore_patterns("report"))
    page = Path(write_report(str(run), 1)).read_text()
    assert len(_articles(page, "documents")) == 2 and len(_articles(page, "dropped")) == 1


def test_manifests_of_an_older_curate_are_refused_with_the_fix(finished_documents_run, tmp_path):  # noqa: F811
    """A documents run whose manifests predate the columns the page draws: a clear error
    naming the command that rewrites them (a refilter, no model), not a traceback."""
    import shutil

    import pyarrow.parquet as pq
    import pytest

    from curate.core.views import QueryError
    from curate.report.build import write_report

    run = tmp_path / "run"
    shutil.copytree(finished_documents_run, run, ignore=shutil.ignore_patterns("report"))
    for part in (run / "manifest").glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["text_sources", "n_images_valid", "n_synthetic_texts"]), part)
    with pytest.raises(QueryError, match=r"has no text_sources, n_images_valid, n_synthetic_texts .* curate refilter"):
        write_report(str(run))
