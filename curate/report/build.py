"""``curate report RUN``: collect the figures and samples of a finished run, write RUN/report/index.html.

A documents run's page is drawn by curate.report.documents. Reads the manifest through the query views (local or bucket), the run's config.yaml for
thresholds and the image column, and only the sampled images from RUN/downloaded/.
"""

from __future__ import annotations

import datetime as dt
import json

import yaml

from curate.core import storage
from curate.dedupe.threshold import default_threshold
from curate.core.views import open_views
from curate.core.rundir import RunDir
from curate.report import html, judges, plots, samples, stats
from curate.report.failures import failures_section
from curate.report.thumbnails import load_thumbnails
from curate.flow.captions import JUDGES
from curate.report.model_facts import model_facts
from curate.schemas.status import STATUS_ORDER
from curate.stages.base import Score
from curate.stages.registry import STAGES

DEFAULT_SAMPLES = 24
# Short labels for the navigation bar (the sections keep their full titles): all of them fit
# on one line of a 1,400 px window.
NAV_LABELS = {"kept": "Kept", "filtered": "Filtered", "duplicates": "Duplicates", "failures": "Failures",
              "capfilt": "CapFilt captions", "judges": "Judges", "eval": "Eval"}


def stage_scores(config: dict | None = None) -> dict[str, Score]:
    """Score columns -> their declarations (curate.stages.base.Score): of every stage, or
    with ``config`` (a run's config.yaml) of the stages that run enabled. The report plots
    the present ones and says which are missing (their stage ran, but scored nothing)."""
    if config is None:
        return stats.declared_scores()
    return {column: score for stage in _enabled_stages(config) for column, score in stage.scores.items()}


def _enabled_stages(config: dict) -> list:
    """The stage classes ``config`` enables; every stage when it no longer validates (a
    run of an older curate), so that the report still notes what is missing."""
    from curate.core.config import ConfigError, validate

    try:
        cfg = validate(config)
    except (ConfigError, ValueError):
        return list(STAGES)
    return [stage for stage in STAGES if stage(cfg).enabled()]


def with_resolved_thresholds(config: dict, summary: dict) -> dict:
    """``config`` with each threshold the decision resolved (a keep fraction, ``auto``: the
    summary's ``thresholds``) set to its value, so the report draws the line the run applied."""
    import copy

    from curate.core.config import set_key

    out = copy.deepcopy(config)
    for key, t in (summary.get("thresholds") or {}).items():
        set_key(out, key.split("."), t.get("resolved"))
    return out


def _read_yaml(uri: str) -> dict:
    return (yaml.safe_load(storage.read_text(uri)) or {}) if storage.exists(uri) else {}


def _read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def write_report(run_root: str, samples_per_group: int | None = None) -> str:
    """Build the report of a finished run; returns the URI of index.html."""
    run = RunDir(run_root.rstrip("/"))
    config = with_resolved_thresholds(_read_yaml(run.config), _read_json(run.summary))
    if samples_per_group is None:
        samples_per_group = (config.get("report") or {}).get("samples", DEFAULT_SAMPLES)
    con = open_views(run.root)
    try:
        if (config.get("input") or {}).get("kind") == "documents":
            from curate.report.documents import render_documents

            text = render_documents(con, run, config, samples_per_group)
        else:
            text = render(con, run, config, samples_per_group)
    finally:
        con.close()
    uri = storage.join(run.report, "index.html")
    storage.write_text(uri, text)
    return uri


def threshold(con, config: dict, column: str) -> float | None:
    """The threshold the run applied to ``column``: from its config, else read back from its reasons."""
    score = stage_scores().get(column)
    value = _config_value(config, score.threshold) if score and score.threshold else None
    return value if isinstance(value, (int, float)) else stats.threshold_from_reasons(con, column)


def _config_value(config: dict, key: str):
    """``config["a"]["b"]`` for the dotted key ``a.b``; None where a part is missing."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def present_scores(con) -> list[str]:
    """Score columns with at least one value (an all-NULL column has nothing to plot)."""
    return [c for c in stats.score_columns(con) if con.execute(f'SELECT count("{c}") FROM manifest').fetchone()[0]]


def render(con, run: RunDir, config: dict, n: int) -> str:
    scores = present_scores(con)
    image_col = (config.get("download") or {}).get("encode_format", "jpg")
    parts = [
        ("funnel", "Funnel", funnel_section(con)),
        ("scores", "Scores", scores_section(con, config, scores)),
        ("captions", "Captions", captions_section(con)),
        ("reasons", "Decisions", reasons_section(con)),
    ]
    if judges.judges(con)[1:]:  # two judges or more: see them against each other
        parts.append(("judges", "Judges", judges_section(con, _read_json(run.summary).get("thresholds") or {})))
    kept = samples.kept_sample(con, n)
    filtered = samples.filtered_samples(con, max(1, n // 2))
    dups = samples.duplicate_groups(con, max(1, n // 4))
    capfilt = samples.capfilt_sample(con, max(1, n // 3)) if "captions" in stats.manifest_columns(con) else None
    thumbs = load_thumbnails(run.downloaded, _all_rows(kept, filtered, dups, capfilt or []), image_col)
    parts += [
        ("kept", "Kept samples", kept_section(kept, thumbs, scores)),
        ("filtered", "Filtered samples", filtered_section(filtered, thumbs, scores)),
        ("duplicates", "Duplicate groups", duplicates_section(dups, thumbs, scores)),
        ("failures", "Download failures and blocked URLs", failures_section(con, retries=_read_json(run.summary).get("retries"))),
        ("capfilt", "Original vs. synthetic captions", capfilt_section(capfilt, thumbs, scores)),
        ("sources", "Sources", sources_section(con)),
    ]
    from curate.report.evaluation import evaluation_section

    evaluated = evaluation_section(run)
    if evaluated:
        parts.append(("eval", "Training evaluation", evaluated))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return html.page(
        title="curate report", subtitle=run.root, headline=headline(con, run, config, scores),
        nav=[("summary", "Summary")] + [(a, NAV_LABELS.get(a, t)) for a, t, _ in parts],
        sections=[html.section(a, t, lead, body) for a, t, (lead, body) in parts],
        footer=f"Generated {html.esc(now)} by <code>curate report</code>. Ask your own questions with "
               f"<code>curate query {html.esc(run.root)} \"SQL\"</code> (docs/queries.md).",
    )


def _all_rows(kept, filtered, dups, capfilt) -> list[dict]:
    rows = list(kept) + [r for group in filtered.values() for r in group] + list(capfilt)
    for group in dups:
        rows += ([group["survivor"]] if group["survivor"] else []) + group["duplicates"]
    return rows


def headline(con, run: RunDir, config: dict, scores: list[str]) -> str:
    counts = dict(con.execute("SELECT status, count(*) FROM manifest GROUP BY 1").fetchall())
    total = sum(counts.values())
    items = [("rows in", total, None, "#3569c9")]
    for status in (s.value for s in STATUS_ORDER):
        share = f"{counts.get(status, 0) / max(total, 1):.1%} of rows in"
        items.append((status.replace("_", " "), counts.get(status, 0), share, plots.status_colour(status)))
    facts = _facts(run, config, scores, con)
    body = html.tiles(items) + f'<p class="facts">{" &nbsp;·&nbsp; ".join(facts)}</p>'
    return f'<section id="summary"><h2>Summary</h2>{body}</section>'


def _facts(run: RunDir, config: dict, scores: list[str], con) -> list[str]:
    summary = _read_json(run.summary)
    index = _read_json(storage.join(run.output, "index.json"))
    facts = []
    if summary.get("wall_seconds"):
        facts.append(f"wall time <b>{summary['wall_seconds']:,.1f} s</b> ({summary.get('rows_per_second')} rows/s)")
    facts += model_facts(config)
    declared = stage_scores()
    for column in scores:
        t = threshold(con, config, column)
        if t is not None:
            sign = "≥" if declared[column].higher_is_better else "≤"
            facts.append(f"{html.esc(column)} {sign} <b>{t:g}</b>")
    dedupe = config.get("dedupe") or {}
    if dedupe.get("enabled", True):
        if dedupe.get("threshold"):
            facts.append(f"dedupe threshold <b>{dedupe['threshold']:g}</b>")
        else:  # the value the run used, not the word "default"
            used = default_threshold((config.get("clip") or {}).get("model"))
            facts.append(f"dedupe threshold <b>{used:g}</b> (the default for this CLIP model)")
    if index:
        facts.append(f"output <b>{index.get('total', 0):,}</b> samples in <b>{len(index.get('shards', []))}</b> shards "
                     f"({html.esc(', '.join(index.get('formats', [])))})")
    return facts


def funnel_section(con) -> tuple[str, str]:
    svg = plots.funnel(stats.funnel_steps(con), "funnel")
    lead = "Rows left after each step, in the order the pipeline decides: URL check, download, image rules, caption rules, model thresholds, dedupe."
    return lead, f'<div class="funnel">{svg}</div>'


def scores_section(con, config: dict, scores: list[str]) -> tuple[str, str]:
    body = []
    expected = stage_scores(config)
    declared = stage_scores()
    for column in scores + [c for c in expected if c not in scores]:
        label = expected[column].label if column in expected else declared[column].label
        if column not in scores:
            body.append(html.note(f"No {html.esc(label)} in this run (manifest column <code>{html.esc(column)}</code> "
                                  "is missing or empty): its stage is enabled but scored nothing, so there is nothing to plot."))
            continue
        t = threshold(con, config, column)
        # Kept images CapFilt rescued (a synthetic caption replaced the alt-text) are their own
        # series: the column holds the alt-text's score, which may be far below the threshold.
        values = stats.values_by_status(con, f'"{column}"', rescued_apart=column in samples.CAPTION_SCORES)
        hist = plots.histogram_by_status(values, column, f"hist-{column}", t)
        curve = plots.keep_fraction_curve(stats.eligible_scores(con, column), column, f"curve-{column}", t,
                                          higher_is_better=declared[column].higher_is_better)
        body.append(f"<h3>{html.esc(label)} (<code>{html.esc(column)}</code>)</h3><div class=\"plots\">"
                    + html.figure(hist, "Distribution per decision; the dashed line is the threshold."
                                  + (f" <b>{stats.RESCUED}</b>: kept with a synthetic caption, plotted at its "
                                     "alt-text's score." if stats.RESCUED in values else ""))
                    + html.figure(curve, "Share of the samples no other rule removed that a threshold would keep (before dedupe).")
                    + "</div>")
    body.append("<h3>Quantiles</h3>" + html.table(stats.score_quantiles(con)))
    return "Scores are stored for every downloaded sample; <code>curate refilter RUN --set clip.min_score=T</code> applies a new threshold without running a model.", "".join(body)


def judges_section(con, resolved: dict) -> tuple[str, str]:
    """Each pair of judges on the same captions: a 2-D histogram per caption group, their
    agreement table, a plain warning for a blind judge, and what turned down the samples
    CapFilt filtered (curate.report.judges)."""
    found = judges.judges(con)
    agreement = judges.agreement(con)  # computed once, for the warnings and the table
    body = []
    for warning in judges.blind_warnings(con, agreement):
        body.append(html.note("<b>Blind judge?</b> " + html.esc(warning)))
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            ta, tb = judges.thresholds(con, a), judges.thresholds(con, b)
            limits = {g: (ta[g], tb[g]) for g in judges.GROUPS}
            svg = plots.judges_map(judges.scatter_points(con, a, b), (a.label, b.label), limits, f"judges-{a.column}-{b.column}")
            body.append(f"<h3>{html.esc(a.label)} against {html.esc(b.label)}</h3>" + html.figure(
                svg, "Every candidate caption both judges scored; darker: more captions. Dashed: each judge's threshold "
                "(read from its reasons; none drawn where it rejected nothing). Top right: both accept; a caption must "
                "pass both."))
    body.append("<h3>Agreement</h3>" + html.table(agreement))
    calibrated = [f"<code>{html.esc(k)}</code>: {html.esc(judges.describe_threshold(k, t).split(': ', 1)[1])}"
                  for k, t in resolved.items() if "calibrated" in t]
    if calibrated:
        body.append("<h3>Calibrated thresholds</h3><ul>" + "".join(f"<li>{c}</li>" for c in calibrated) + "</ul>")
    rejected = judges.rejected_by(con)
    if rejected.num_rows:
        body.append("<h3>Which judge said no</h3>" + html.table(rejected))
    lead = ("Every caption must pass every judge. Judges have blind spots of their own: where one accepts what the "
            "other rejects, the other decides. <code>auto</code> thresholds are calibrated on this run "
            "(docs/capfilt.md, Judges).")
    return lead, "".join(body)


def captions_section(con) -> tuple[str, str]:
    values = stats.values_by_status(con, stats.CAPTION_WORDS)
    training = stats.training_caption_words(con)
    top = max((v.max() for v in [*values.values(), *training.values()] if len(v)), default=1)
    bins = [b - 0.5 for b in range(0, int(min(top, 80)) + 2)]
    svg = plots.histogram_by_status(values, "words in the alt-text", "caption-words", bins=bins)
    figures = html.figure(svg, "Alt-text length in words per decision (capped at 80).")
    if training:
        svg = plots.histogram_by_status(training, "words in the training caption", "training-caption-words", bins=bins)
        figures += html.figure(svg, f"Training caption length of the kept samples: the alt-text (kept) or the "
                                    f"synthetic caption CapFilt chose ({stats.RESCUED}).")
    return "Length of the alt-text per decision, and of the captions the kept samples train with.", (
        f'<div class="plots">{figures}</div>' + "<h3>Quantiles</h3>" + html.table(stats.caption_length_quantiles(con))
    )


def reasons_section(con) -> tuple[str, str]:
    return "Every input row has one status and a machine-readable reason (docs/manifest.md).", html.table(stats.status_reasons(con))


def kept_section(rows, thumbs, scores) -> tuple[str, str]:
    if not rows:
        return "", html.note("No sample was kept.")
    return f"A random sample of {len(rows)} kept samples with their training captions.", html.grid(rows, thumbs, scores)


def filtered_section(groups, thumbs, scores) -> tuple[str, str]:
    if not groups:
        return "", html.note("No sample was filtered.")
    body = "".join(f"<h3>{html.badge('filtered', code)} {rows[0]['code_rows']:,} rows, {len(rows)} shown</h3>"
                   + html.grid(rows, thumbs, scores) for code, rows in groups.items())
    return "Samples per filter reason: check that each rule removes what it should, and nothing else.", body


def duplicates_section(groups, thumbs, scores) -> tuple[str, str]:
    if not groups:
        return "", html.note("No duplicates were found (or dedupe was off).")
    rows = []
    for g in groups:
        survivor = (html.card(g["survivor"], thumbs.get(g["survivor_id"]), scores, "survivor", show_reason=False)
                    if g["survivor"] else f'<figure class="card survivor"><div class="noimg">{html.esc(g["survivor_id"])}<br>(earlier run)</div></figure>')
        copies = "".join(html.card(d, thumbs.get(d["sample_id"]), scores, show_reason=False) for d in g["duplicates"])
        rows.append(f'<div class="dup">{survivor}{copies}</div>')
    lead = "The largest duplicate groups: the survivor (green border, kept) first, then the copies that point to it (<code>duplicate_of:&lt;sample_id&gt;</code>)."
    return lead, f'<div class="dups">{"".join(rows)}</div>'


def capfilt_section(rows, thumbs, scores) -> tuple[str, str]:
    if rows is None:
        return "", html.note("This run has no candidate captions (manifest column <code>captions</code>): the CapFilt "
                             "captioner and filter stages were not part of it.")
    if not rows:
        return "", html.note("No kept sample has candidate captions.")
    items = []
    for row in rows:
        thumb = thumbs.get(row["sample_id"])
        image = f'<img src="{thumb}" alt="{html.esc(row["sample_id"])}">' if thumb else '<div class="noimg">no image</div>'
        # the caption judges' scores (curate.flow.captions.JUDGES), in the order they break ties
        lines = "".join(
            f'<tr class="{"chosen" if c.get("text") == row.get("caption_chosen") else ""}">'
            f'<td>{html.badge("kept" if c.get("kept") else "filtered", c.get("source") or "?")}</td>'
            f'<td>{html.esc(c.get("text"))}</td>'
            + "".join(f'<td class="num">{html.fmt(c.get(judge))}</td>' for judge in JUDGES)
            + f'<td>{"kept" if c.get("kept") else "dropped"}</td></tr>'
            for c in row["captions"]
        )
        heads = "".join(f'<th class="num">{html.esc(judge)}</th>' for judge in JUDGES)
        items.append(f'<div class="capfilt"><figure class="card">{image}</figure><div class="scroll"><table>'
                     f'<thead><tr><th>source</th><th>caption</th>{heads}'
                     f'<th></th></tr></thead><tbody>{lines}</tbody></table></div></div>')
    return "Candidate captions of kept samples; the highlighted row is the training caption (<code>caption_chosen</code>).", "".join(items)


def sources_section(con) -> tuple[str, str]:
    body = "<h3>Top domains</h3>" + html.table(stats.top_domains(con))
    hosts = stats.host_figures(con)
    if hosts.num_rows:
        body += "<h3>Download figures per host</h3>" + html.table(hosts)
    body += "<h3>Kept fraction per input file</h3>" + html.table(stats.kept_per_input_file(con))
    return "", body
