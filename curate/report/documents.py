"""The report page of a documents run (``input.kind: documents``): one self-contained page.

Sections: the summary (documents and images per status), the funnels of documents (its
rules in order) and of images (each step of their decision), score histograms over the
images, the decisions per reason, a few kept documents drawn in reading order (each image
at its chosen place, synthetic captions marked, then every image the document lost with its
reason), a few dropped documents as the input had them (each image with its reason), the
download failures and the image domains. Reads the views (curate.core.views), the run's
config and only the drawn images from RUN/downloaded/.
"""

from __future__ import annotations

import datetime as dt
import json

from curate.core import storage
from curate.core.config import InterleavedConfig
from curate.core.rundir import RunDir
from curate.core.views import QueryError
from curate.flow.document_rules import document_rules
from curate.flow.documents import PLACED_SCORES
from curate.report import document_stats as ds
from curate.report import html, plots, stats
from curate.report.failures import failures_section
from curate.report.model_facts import model_facts
from curate.report.thumbnails import load_thumbnails
from curate.schemas.status import STATUS_ORDER, Status

def _interleaved(config: dict) -> InterleavedConfig:
    """The run's interleaved settings (defaults where its config.yaml has none)."""
    try:
        return InterleavedConfig(**(config.get("interleaved") or {}))
    except ValueError:  # a config.yaml of another version: the defaults still draw the page
        return InterleavedConfig()


def _threshold(config: dict, key: str) -> float | None:
    """The value of the dotted config key ``key`` the run used (its default where its
    config.yaml has none); None when it has none or the config no longer validates."""
    from curate.core.config import ConfigError, validate

    try:
        node = validate(config)
    except (ConfigError, ValueError):
        return None
    for part in key.split("."):
        node = getattr(node, part, None)
    return node if isinstance(node, (int, float)) else None


# Manifest columns the page reads that a documents run's manifests gained with it.
NEEDED = {"manifest": ("text_sources", "n_images_valid", "n_synthetic_texts"),
          "manifest_images": ("text_source", "placed_clip_score", "placed_itm_prob")}


def _check_columns(con, run: RunDir) -> None:
    """QueryError, saying how to rewrite them, when the manifests predate these columns."""
    for table, needed in NEEDED.items():
        have = {r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}
        missing = [c for c in needed if c not in have]
        if missing:
            raise QueryError(f"{run.root}: its {table} has no {', '.join(missing)} (written by an older curate); "
                             f"rewrite the manifests from the stored scores, no model runs: curate refilter "
                             f"{run.root} --set report.enabled=true")


def _retries(run: RunDir) -> list[dict] | None:
    """summary.json's "retries" (what each `curate retry` recovered), if any."""
    return json.loads(storage.read_text(run.summary)).get("retries") if storage.exists(run.summary) else None


def render_documents(con, run: RunDir, config: dict, n: int) -> str:
    """The whole page of a documents run; ``n``: the report's sample size (report.samples).
    QueryError when its manifests were written by a curate without the columns it draws."""
    _check_columns(con, run)
    cfg = _interleaved(config)
    image_col = (config.get("download") or {}).get("encode_format", "jpg")
    kept = ds.sample_documents(con, Status.KEPT, max(2, n // 4))
    dropped = ds.sample_documents(con, Status.FILTERED, max(1, n // 8))
    images = ds.images_of(con, [d["sample_id"] for d in kept + dropped])
    thumbs = load_thumbnails(run.downloaded, [im for rows in images.values() for im in rows], image_col)
    texts = ds.input_texts(run, [d["sample_id"] for d in dropped])
    parts = [
        ("funnel", "Funnel", funnel_section(con, cfg)),
        ("scores", "Scores", scores_section(con, config)),
        ("reasons", "Decisions", reasons_section(con)),
        ("documents", "Kept documents, in reading order", kept_section(kept, images, thumbs)),
        ("dropped", "Dropped documents", dropped_section(dropped, images, texts, thumbs)),
        ("failures", "Download failures and blocked URLs", failures_section(con, "manifest_images", "Images", _retries(run))),
        ("sources", "Sources", sources_section(con)),
    ]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return html.page(
        title="curate report: documents", subtitle=run.root, headline=headline(con, config, cfg),
        nav=[("summary", "Summary")] + [(a, t) for a, t, _ in parts],
        sections=[html.section(a, t, lead, body) for a, t, (lead, body) in parts],
        footer=f"Generated {html.esc(now)} by <code>curate report</code>. Ask your own questions with "
               f"<code>curate query {html.esc(run.root)} \"SQL\"</code> over <code>manifest</code> (documents) "
               "and <code>manifest_images</code> (docs/formats.md).",
    )


def _status_tiles(con, table: str, noun: str) -> list[tuple[str, int, str | None, str]]:
    counts = dict(con.execute(f"SELECT status, count(*) FROM {table} GROUP BY 1").fetchall())
    total = sum(counts.values())
    items = [(f"{noun} in", total, None, "#3569c9")]
    for status in (s.value for s in STATUS_ORDER):
        if counts.get(status) or status in (Status.KEPT.value, Status.FILTERED.value):
            items.append((f"{noun} {status.replace('_', ' ')}", counts.get(status, 0),
                          f"{counts.get(status, 0) / max(total, 1):.1%}", plots.status_colour(status)))
    return items


def headline(con, config: dict, cfg: InterleavedConfig) -> str:
    facts = []
    facts += model_facts(config, "documents")
    facts.append(f"min_sim <b>{cfg.min_sim:g}</b>")
    if cfg.min_itm is not None:
        facts.append(f"min_itm <b>{cfg.min_itm:g}</b>")
    facts.append(f"placement <b>{html.esc(cfg.placement)}</b> by <b>{html.esc(cfg.placement_by)}</b>")
    facts.append(f"synthetic captions for unmatched images <b>{'on' if cfg.caption_unmatched else 'off'}</b>")
    body = (html.tiles(_status_tiles(con, "manifest", "documents")) + html.tiles(_status_tiles(con, "manifest_images", "images"))
            + f'<p class="facts">{" &nbsp;·&nbsp; ".join(facts)}</p>')
    return f'<section id="summary"><h2>Summary</h2>{body}</section>'


def funnel_section(con, cfg: InterleavedConfig) -> tuple[str, str]:
    codes = [rule.codes[0].name for rule in document_rules(cfg)]
    docs = plots.funnel(ds.document_funnel(con, codes), "funnel-documents")
    imgs = plots.funnel(ds.image_funnel(con), "funnel-images")
    lead = ("Documents left after each document rule, in the order they apply; images left after each step of "
            "their decision: the URL check, the download, the image rules, a text describing them (or a "
            "synthetic caption), dedupe, placement, and their document's rules.")
    return lead, (f'<h3>Documents</h3><div class="funnel">{docs}</div>'
                  f'<h3>Images</h3><div class="funnel">{imgs}</div>')


def _ordered(values: dict) -> dict:
    order = [s.value for s in STATUS_ORDER] + ["original", "synthetic"]
    return {k: values[k] for k in sorted(values, key=lambda k: order.index(k) if k in order else len(order))}


def scores_section(con, config: dict) -> tuple[str, str]:
    image_columns = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE manifest_images)").fetchall()}
    body = []
    for column, score in stats.declared_scores("documents").items():
        label, placed = score.label, column in PLACED_SCORES
        values = {} if column not in image_columns else ds.values_by(
            con, "manifest_images", f'"{column}"', "text_source" if placed else "status",
            f"status = {Status.KEPT.sql}" if placed else "TRUE")
        if not values:  # the column is missing (its stage is off) or empty
            body.append(html.note(f"No {html.esc(label)} in this run (<code>{html.esc(column)}</code> is empty): "
                                  "its stage was off."))
            continue
        threshold = _threshold(config, score.threshold) if score.threshold else None
        svg = plots.histogram_by_status(_ordered(values), column, f"hist-{column}", threshold)
        caption = ("Kept images, by where their text comes from: the document (original) or their synthetic "
                   "caption." if placed else "Images per decision; the dashed line is the threshold.")
        body.append(f"<h3>{html.esc(label)} (<code>{html.esc(column)}</code>)</h3>"
                    f'<div class="plots">{html.figure(svg, caption)}</div>')
    words = plots.histogram_by_status(_ordered(ds.values_by(con, "manifest", "n_words", "status")), "words",
                                       "hist-words")
    kept = plots.histogram_by_status(_ordered(ds.values_by(con, "manifest", "n_images_kept", "status")),
                                     "images kept", "hist-images-kept")
    body.append("<h3>Documents</h3><div class=\"plots\">"
                + html.figure(words, "Words of text per document, per decision.")
                + html.figure(kept, "Images in the curated document, per decision.") + "</div>")
    lead = ("Scores are stored for every downloaded image; <code>curate refilter RUN --set interleaved.min_sim=T</code> "
            "(or <code>min_itm</code>, <code>placement_by</code>, ...) decides again without a model.")
    return lead, "".join(body)


def reasons_section(con) -> tuple[str, str]:
    body = ("<h3>Documents</h3>" + html.table(stats.status_reasons(con))
            + "<h3>Images</h3>" + html.table(stats.status_reasons(con, "manifest_images")))
    return "Every document and every image has one status and a machine-readable reason (docs/manifest.md).", body


def _image(row: dict, thumbs: dict[str, str], meta: list[str]) -> str:
    thumb = thumbs.get(row["sample_id"])
    picture = (f'<img src="{thumb}" alt="{html.esc(row["sample_id"])}">' if thumb
               else f'<div class="noimg">{html.esc(row["status"].replace("_", " "))}</div>')
    spans = "".join(f"<span>{m}</span>" for m in meta)
    return (f'<figure class="im" data-kind="image" data-id="{html.esc(row["sample_id"])}" title="{html.esc(row["url"])}">'
            f'{picture}<figcaption><span class="mono">{html.esc(row["sample_id"])}</span>{spans}</figcaption></figure>')


def _scores(row: dict) -> list[str]:
    out = []
    for column in PLACED_SCORES:  # its scores against the text it was placed at
        if row.get(column) is not None:
            out.append(f"{html.esc(column.replace('_', ' '))} <b>{row[column]:.3f}</b>")
    return out


def _lost(rows: list[dict], thumbs: dict[str, str]) -> str:
    """The images of a document that are not in it, each with its reason."""
    lost = [r for r in rows if r["status"] != Status.KEPT.value]
    if not lost:
        return ""
    items = "".join(_image(r, thumbs, [html.badge(r["status"], r["reason"])]) for r in lost)
    return f'<div class="lost"><h4>Images not in the document ({len(lost)})</h4><div class="row">{items}</div></div>'


def kept_section(docs: list[dict], images: dict[str, list[dict]], thumbs: dict[str, str]) -> tuple[str, str]:
    if not docs:
        return "", html.note("No document was kept.")
    out = []
    for doc in docs:
        rows = {r["sample_id"]: r for r in images.get(doc["sample_id"], [])}
        items = []
        sources = doc["text_sources"] or [None] * len(doc["texts"])
        for text, image_id, source in zip(doc["texts"], doc["image_ids"], sources):
            if image_id is not None:
                items.append(_image(rows[image_id], thumbs, _scores(rows[image_id])))
            elif source == "synthetic":
                items.append(f'<p class="t syn" data-kind="caption">{html.badge("kept", "synthetic caption")} '
                             f"{html.esc(text)}</p>")
            else:
                items.append(f'<p class="t" data-kind="text">{html.esc(text)}</p>')
        head = (f'<h3><span class="mono">{html.esc(doc["sample_id"])}</span> {html.badge("kept")} '
                f'<span class="sub">{doc["n_words"]} words, {doc["n_images_kept"]} of {doc["n_images_in"]} images'
                f'{", " + str(doc["n_synthetic_texts"]) + " synthetic captions" if doc["n_synthetic_texts"] else ""}'
                "</span></h3>")
        out.append(f'<article class="doc" data-doc="{html.esc(doc["sample_id"])}">{head}'
                   f'<div class="seq">{"".join(items)}</div>{_lost(list(rows.values()), thumbs)}</article>')
    lead = ("Kept documents as a trainer reads them: each image right before the text it was placed at, a "
            "synthetic caption right after the image it describes, and below each document the images it lost, "
            "with the reason.")
    return lead, "".join(out)


def dropped_section(docs: list[dict], images: dict[str, list[dict]], texts: dict[str, list[str]],
                    thumbs: dict[str, str]) -> tuple[str, str]:
    if not docs:
        return "", html.note("No document was dropped.")
    out = []
    for doc in docs:
        rows = images.get(doc["sample_id"], [])
        doc_texts = texts.get(doc["sample_id"], [])
        by_slot: dict[int, list[dict]] = {}
        for row in rows:
            by_slot.setdefault(row["original_slot"], []).append(row)
        items = []
        for j in range(len(doc_texts) + 1):
            items += [_image(r, thumbs, [html.badge(r["status"], r["reason"])]) for r in by_slot.get(j, [])]
            if j < len(doc_texts):
                items.append(f'<p class="t" data-kind="text">{html.esc(doc_texts[j])}</p>')
        head = (f'<h3><span class="mono">{html.esc(doc["sample_id"])}</span> {html.badge("filtered", doc["reason"])} '
                f'<span class="sub">{doc["n_words"]} words, {doc["n_images_valid"] or 0} valid images of '
                f'{doc["n_images_in"]}</span></h3>')
        out.append(f'<article class="doc dropped" data-doc="{html.esc(doc["sample_id"])}">{head}'
                   f'<div class="seq">{"".join(items)}</div></article>')
    return "Dropped documents as the input had them, each image with its reason.", "".join(out)


def sources_section(con) -> tuple[str, str]:
    return "", "<h3>Top image domains</h3>" + html.table(stats.top_domains(con, table="manifest_images"))
