"""The report page: one self-contained HTML file (inline CSS, SVG figures, data: images).

Pure rendering: every function takes plain data and returns an HTML string; nothing here
reads the run. All text from the data (captions, URLs, reasons) goes through ``esc``.
A small script at the end records, in ``#report-check``, how many images decoded and
whether any script error happened, so a headless browser test can read it from the DOM.
"""

from __future__ import annotations

import html

import pyarrow as pa

from curate.report.plots import status_colour

CSS = """
:root { --ink:#1f2630; --muted:#66707d; --line:#e4e7eb; --bg:#f6f7f9; --card:#fff; --accent:#3569c9; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header.top { background:#1f2630; color:#fff; padding:28px 0 22px; }
.wrap { max-width:1180px; margin:0 auto; padding:0 24px; }
header.top h1 { margin:0 0 4px; font-size:24px; font-weight:650; letter-spacing:-.01em; }
header.top .sub { color:#b8c0cc; font-size:13px; word-break:break-all; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); }
nav .wrap { display:flex; flex-wrap:wrap; gap:6px 18px; padding-top:10px; padding-bottom:10px; }
nav a { color:var(--muted); text-decoration:none; font-size:13px; white-space:nowrap; }
nav a:hover { color:var(--accent); }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:20px 22px; margin:22px 0; }
h2 { font-size:18px; margin:0 0 4px; }
h3 { font-size:14px; margin:18px 0 8px; }
p.lead { color:var(--muted); margin:0 0 14px; }
.note { background:#fff8e6; border:1px solid #f3dfa8; border-radius:8px; padding:10px 14px; color:#6b5514; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px; margin:18px 0 6px; }
.tile { background:#fff; border:1px solid var(--line); border-radius:10px; padding:12px 14px; border-top:4px solid var(--c,#3569c9); }
.tile .n { font-size:26px; font-weight:680; letter-spacing:-.02em; }
.tile .l { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.tile .p { color:var(--muted); font-size:12px; }
.facts { color:var(--muted); font-size:13px; margin:6px 0 0; }
.facts b { color:var(--ink); font-weight:600; }
.plots { display:grid; grid-template-columns:repeat(2,minmax(0,1fr)); gap:18px; }
@media (max-width:800px) { .plots { grid-template-columns:1fr; } }
.plots figure { margin:0; }
.plots figcaption { font-size:12px; color:var(--muted); margin-top:2px; }
svg { width:100%; height:auto; display:block; }
.funnel svg { max-width:820px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; }
.card { margin:0; background:#fff; border:1px solid var(--line); border-radius:8px; overflow:hidden; }
.card img, .card .noimg { width:100%; aspect-ratio:1/1; object-fit:contain; background:#eef0f3; display:block; }
.card .noimg { display:flex; align-items:center; justify-content:center; color:var(--muted); font-size:12px; }
.card figcaption { padding:7px 9px 9px; font-size:12px; }
.card .cap { margin:0 0 4px; overflow-wrap:anywhere; display:-webkit-box; -webkit-box-orient:vertical; -webkit-line-clamp:6; line-clamp:6; overflow:hidden; }
.card .meta { margin:0; color:var(--muted); display:flex; flex-wrap:wrap; gap:4px 8px; }
.card .meta span { min-width:0; max-width:100%; overflow-wrap:anywhere; }
.badge { display:inline-block; padding:0 6px; border-radius:9px; font-size:11px; color:#fff; background:var(--c,#888); }
.mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:11px; }
.dups { display:grid; grid-template-columns:repeat(auto-fill,minmax(500px,1fr)); gap:14px 24px; }
.dup { display:flex; gap:10px; overflow-x:auto; padding-bottom:4px; }
.dup .card { flex:0 0 150px; }
.dup .card.survivor { border:2px solid #2e9d5b; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td .mono { overflow-wrap:anywhere; }
.scroll { overflow-x:auto; }
.capfilt { display:grid; grid-template-columns:150px 1fr; gap:14px; padding:12px 0; border-bottom:1px solid var(--line); }
.capfilt tr.chosen td { background:#eaf6ee; font-weight:600; }
footer { color:var(--muted); font-size:12px; padding:10px 0 40px; }
.doc { border-top:1px solid var(--line); padding:14px 0 6px; }
.doc h3 .sub { color:var(--muted); font-weight:400; font-size:12px; margin-left:6px; }
.doc h4 { font-size:12px; color:var(--muted); margin:10px 0 6px; font-weight:600; }
.seq { max-width:760px; }
.seq .t { margin:4px 0 10px; }
.seq .t.syn { color:#7a4a12; font-style:italic; }
.im { margin:6px 0; display:inline-flex; flex-direction:column; width:150px; vertical-align:top; margin-right:8px;
      background:#fff; border:1px solid var(--line); border-radius:8px; overflow:hidden; }
.im img, .im .noimg { width:150px; height:150px; object-fit:contain; background:#eef0f3; display:block; }
.im .noimg { display:flex; align-items:center; justify-content:center; color:var(--muted); font-size:12px; }
.im figcaption { padding:5px 7px 7px; font-size:11px; display:flex; flex-wrap:wrap; gap:3px 6px; }
.im figcaption .badge { white-space:normal; overflow-wrap:anywhere; }
.lost .row { display:flex; flex-wrap:wrap; gap:0; }
"""

# Runs first: records script errors so the check below can report them.
ERROR_TRAP = """window.__reportErrors = [];
window.addEventListener('error', function (e) { window.__reportErrors.push(String(e.message || e)); });"""

# Runs after every image has loaded (or failed): writes the result where --dump-dom sees it.
IMAGE_CHECK = """window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var check = document.getElementById('report-check');
  check.setAttribute('data-images-total', String(images.length));
  check.setAttribute('data-images-loaded', String(loaded));
  check.setAttribute('data-errors', String(window.__reportErrors.length));
  var nav = document.querySelector('nav .wrap');
  check.setAttribute('data-nav-fits', nav && nav.scrollWidth <= nav.clientWidth ? 'yes' : 'no');
  check.setAttribute('data-nav-rows', nav ? String(new Set(Array.prototype.map.call(
    nav.querySelectorAll('a'), function (a) { return a.offsetTop; })).size) : '0');
  var cut = Array.prototype.filter.call(document.querySelectorAll('.reason'), function (el) {
    return el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().right > el.closest('.card').getBoundingClientRect().right + 1;
  });
  check.setAttribute('data-reasons', String(document.querySelectorAll('.reason').length));
  check.setAttribute('data-reasons-cut', String(cut.length));
  check.setAttribute('data-ready', 'yes');
});"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def badge(status: str, text: str | None = None) -> str:
    return f'<span class="badge" style="--c:{status_colour(status)}">{esc(text or status)}</span>'


def section(anchor: str, title: str, lead: str, body: str) -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def table(data: pa.Table | list[dict], columns: list[str] | None = None) -> str:
    rows = data.to_pylist() if isinstance(data, pa.Table) else data
    columns = columns or (data.column_names if isinstance(data, pa.Table) else list(rows[0]) if rows else [])
    numeric = {c for c in columns if rows and all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if c in numeric else ""}">{esc(fmt(r.get(c)))}</td>' for c in columns) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def tiles(items: list[tuple[str, int, str | None, str]]) -> str:
    """Headline numbers: (label, count, share text, colour)."""
    out = []
    for label, count, share, colour in items:
        share_html = f'<div class="p">{esc(share)}</div>' if share else ""
        out.append(f'<div class="tile" style="--c:{colour}"><div class="l">{esc(label)}</div>'
                   f'<div class="n">{count:,}</div>{share_html}</div>')
    return f'<div class="tiles">{"".join(out)}</div>'


def card(row: dict, thumb: str | None, scores: list[str], extra_class: str = "", show_reason: bool = True) -> str:
    image = f'<img src="{thumb}" alt="{esc(row.get("sample_id"))}">' if thumb else '<div class="noimg">no image</div>'
    caption = row.get("caption_chosen") or row.get("caption")
    meta = [f'<span>{esc(s.replace("_", " "))} <b>{row[s]:.3f}</b></span>' for s in scores if row.get(s) is not None]
    if row.get("caption_chosen") and row.get("caption_source") == "synthetic":
        meta.insert(0, f'<span>{badge("kept", "CapFilt caption")}</span>')
    if show_reason and row.get("reason"):
        meta.append(f'<span class="mono reason">{esc(row["reason"])}</span>')
    meta.append(f'<span class="mono">{esc(row.get("sample_id"))}</span>')
    return (f'<figure class="card {extra_class}" title="{esc(row.get("url"))}">{image}<figcaption>'
            # a long caption is clamped to six lines (CSS); the whole of it is the tooltip
            f'<p class="cap" title="{esc(caption)}">{esc(caption) or "<i>(empty caption)</i>"}</p>'
            f'<p class="meta">{"".join(meta)}</p>'
            f"</figcaption></figure>")


def grid(rows: list[dict], thumbs: dict[str, str], scores: list[str], show_reason: bool = True) -> str:
    cards = "".join(card(r, thumbs.get(r["sample_id"]), scores, show_reason=show_reason) for r in rows)
    return f'<div class="grid">{cards}</div>'


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def page(title: str, subtitle: str, headline: str, nav: list[tuple[str, str]], sections: list[str], footer: str) -> str:
    links = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
<script>{ERROR_TRAP}</script>
</head><body>
<header class="top"><div class="wrap"><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></div></header>
<nav><div class="wrap">{links}</div></nav>
<main class="wrap">
{headline}
{"".join(sections)}
<footer>{footer}</footer>
</main>
<div id="report-check" hidden data-ready="no"></div>
<script>{IMAGE_CHECK}</script>
</body></html>
"""
