"""The report's "Training evaluation" section: `curate eval`'s results (RUN/eval/summary.json,
the summary over seeds of RUN/eval/results.parquet, written by curate.eval.results).

Per key metric, a figure of each selection's mean with its seed spread as an error bar,
and a table: the selection's size, samples seen, times each sample was seen, mean ± sd, and
the difference to ``raw`` with its spread, saying in words when it is within noise
(curate.eval.results). No section when the run has not been evaluated.
"""

from __future__ import annotations

import json

from curate.core import storage
from curate.core.rundir import RunDir
from curate.report import html, plots

BASELINE = "raw"  # curate.eval.results.BASELINE (the eval package sits above the report)


def _errorbars(summary: dict, metric: str, name: str) -> str:
    names = list(summary["selections"])
    means = [summary["selections"][n]["metrics"].get(metric, {}).get("mean", float("nan")) for n in names]
    sds = [summary["selections"][n]["metrics"].get(metric, {}).get("sd", 0.0) for n in names]
    fig, ax = plots._figure(5.6, 0.5 + 0.45 * len(names))
    ax.errorbar(means, range(len(names)), xerr=sds, fmt="o", color=plots.INK, capsize=4)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean ± sd over seeds)", fontsize=8)
    return plots._svg(fig, name)


def evaluation_section(run: RunDir) -> tuple[str, str] | None:
    """(lead, body) of the section, or None when the run has not been evaluated."""
    uri = storage.join(run.root, "eval", "summary.json")
    if not storage.exists(uri):
        return None
    summary = json.loads(storage.read_text(uri))
    shown = summary.get("key_metrics") or summary["metrics"]
    rows = []
    for name, sel in summary["selections"].items():
        for metric in shown:
            s = sel["metrics"].get(metric)
            if s is None:
                continue
            if s["diff"] is None:
                versus = "baseline" if name == BASELINE else "no raw to compare"
            elif s["within_noise"] is None:
                versus = f"{s['diff']:+.3f} (one seed: no spread)"
            else:
                versus = f"{s['diff']:+.3f} ± {s['diff_sd']:.3f}, " + (
                    "within noise" if s["within_noise"] else "beyond noise")
            rows.append({"selection": name, "metric": metric, "samples": sel["samples"],
                         "samples seen": sel["samples_seen"], "times each": round(sel["times_seen"] or 0, 2),
                         "seeds": s["n"], "mean ± sd": f"{s['mean']:.3f} ± {s['sd']:.3f}", "vs raw": versus})
    figures = "".join(html.figure(_errorbars(summary, m, f"eval-{i}"), html.esc(m)) for i, m in enumerate(shown))
    lead = ("A small CLIP trained with open_clip on each selection of this run at the same number of samples seen "
            "(DataComp's rule), evaluated zero-shot; error bars are the spread over seeds. Every metric is in "
            "<code>eval_results</code> (<code>curate query</code>); docs/eval.md.")
    return lead, figures + html.table(rows)
