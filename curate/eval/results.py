"""Results over seeds: RUN/eval/results.parquet, the summary and the terminal table.

results.parquet has one row per (selection, seed, metric) with the selection's size, the
samples seen and how many times each sample was seen on average (``curate query RUN
"SELECT * FROM eval_results"``). The summary gives each (selection, metric) its mean and
spread over seeds (the sample standard deviation; 0 with one seed) and its difference to
``raw`` with the difference's spread, sqrt(sd_a^2 + sd_raw^2). Two selections are *within
noise* on a metric when their difference is no larger than that spread: with a handful of
seeds this is a plain rule of thumb, not a significance test, and the table says which.
"""

from __future__ import annotations

import math
import statistics

import pyarrow as pa

from curate.core import storage

RESULTS_SCHEMA = pa.schema([
    ("selection", pa.string()), ("seed", pa.int64()), ("metric", pa.string()), ("value", pa.float64()),
    ("samples", pa.int64()), ("samples_seen", pa.int64()), ("times_seen", pa.float64()), ("steps", pa.int64()),
    ("model", pa.string()), ("train_seconds", pa.float64()), ("train_loss", pa.float64()), ("checkpoint", pa.string()),
])
BASELINE = "raw"


def rows(jobs: list[dict]) -> pa.Table:
    """The long table of finished jobs (curate.eval.jobs.run_job results)."""
    out = []
    for job in jobs:
        for metric, value in sorted(job["metrics"].items()):
            out.append({"selection": job["selection"], "seed": job["seed"], "metric": metric, "value": value,
                        "samples": job["samples"], "samples_seen": job["samples_seen"], "times_seen": job["times_seen"],
                        "steps": job["steps"], "model": job["train"]["model"], "train_seconds": job["train_seconds"],
                        "train_loss": job["train_loss"], "checkpoint": job["checkpoint"]})
    return pa.Table.from_pylist(out, schema=RESULTS_SCHEMA)


def write(eval_root: str, table: pa.Table) -> str:
    uri = storage.join(eval_root, "results.parquet")
    storage.write_parquet(uri, table)
    return uri


def key_metrics(metrics: list[str]) -> list[str]:
    """The metrics the table shows: each classification set's top-1 and each retrieval set's
    R@5 both ways (results.parquet has them all)."""
    keep = [m for m in metrics if m.endswith(("/top1", "/image_to_text_R@5", "/text_to_image_R@5"))]
    return keep or list(metrics)


def summarise(table: pa.Table) -> dict:
    """``{"selections": {name: {"samples", "samples_seen", "times_seen", "seeds",
    "metrics": {metric: {"mean", "sd", "n", "diff", "diff_sd", "within_noise"}}}}, "metrics": [...]}``;
    ``diff``/``diff_sd``/``within_noise`` are against ``raw`` (None when raw was not evaluated)."""
    data = table.to_pylist()
    selections: dict[str, dict] = {}
    for row in data:
        sel = selections.setdefault(row["selection"], {"samples": row["samples"], "samples_seen": row["samples_seen"],
                                                        "times_seen": row["times_seen"], "seeds": set(), "values": {}})
        sel["seeds"].add(row["seed"])
        sel["values"].setdefault(row["metric"], []).append(row["value"])
    metrics = sorted({row["metric"] for row in data})
    for sel in selections.values():
        sel["seeds"] = sorted(sel["seeds"])
        sel["metrics"] = {m: _stats(v) for m, v in sel.pop("values").items()}
    base = selections.get(BASELINE)
    for name, sel in selections.items():
        for metric, s in sel["metrics"].items():
            b = base["metrics"].get(metric) if base and name != BASELINE else None
            if b is None:
                s.update(diff=None, diff_sd=None, within_noise=None)
                continue
            diff, spread = s["mean"] - b["mean"], math.sqrt(s["sd"] ** 2 + b["sd"] ** 2)
            # one seed on either side: no spread, so no verdict
            noise = abs(diff) <= spread if min(s["n"], b["n"]) > 1 else None
            s.update(diff=diff, diff_sd=spread, within_noise=noise)
    return {"selections": selections, "metrics": metrics, "key_metrics": key_metrics(metrics)}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def noise_lines(summary: dict) -> list[str]:
    """Plain sentences: each selection against raw on each key metric, within noise or not."""
    lines = []
    for name, sel in summary["selections"].items():
        for metric in key_metrics(summary["metrics"]):
            s = sel["metrics"].get(metric)
            if not s or s["diff"] is None:
                continue
            base = summary["selections"][BASELINE]["metrics"][metric]
            if min(s["n"], base["n"]) < 2:
                verdict = "one seed: no spread to tell noise from a difference"
            else:
                verdict = ("within noise of raw" if s["within_noise"]
                           else "better than raw" if s["diff"] > 0 else "worse than raw")
            lines.append(f"{name} on {metric}: {s['diff']:+.3f} ± {s['diff_sd']:.3f} vs raw, {verdict} "
                         f"({s['n']} seeds; raw {base['n']})")
    return lines


def print_table(summary: dict, console) -> None:
    """The terminal table: per selection its size, samples seen and times each sample was
    seen, and each key metric as mean ± sd and its difference to raw."""
    from rich.table import Table

    from curate.core.terminal import print_full

    shown = key_metrics(summary["metrics"])
    table = Table(title="curate eval: zero-shot results (mean ± sd over seeds; Δ raw ± spread, ≈ within noise)")
    for column in ("selection", "samples", "seen", "x each", "seeds", *shown):
        table.add_column(column, justify="left" if column == "selection" else "right")
    for name, sel in summary["selections"].items():
        cells = []
        for metric in shown:
            s = sel["metrics"].get(metric)
            if s is None:
                cells.append("-")
                continue
            cell = f"{s['mean']:.3f} ± {s['sd']:.3f}"
            if s["diff"] is not None:
                cell += f"\nΔ {s['diff']:+.3f} ± {s['diff_sd']:.3f}{' ≈' if s['within_noise'] else ''}"
            cells.append(cell)
        times = f"{sel['times_seen']:.1f}" if sel["times_seen"] else "-"
        table.add_row(name, f"{sel['samples']:,}", f"{sel['samples_seen']:,}", times, str(len(sel["seeds"])), *cells)
    print_full(console, table)
    for line in noise_lines(summary):
        console.print(line, soft_wrap=True)
