"""The end-of-run summary: rows in, kept, counts per status and reason, wall time."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from curate.core import storage
from curate.core.rundir import RunDir
from curate.core.textsafe import literal
from curate.schemas.status import Status
from curate.core.terminal import print_full


def compute_summary(counts: dict, wall_seconds: float) -> dict:
    """The summary from the decision's merged counts (curate.pipeline.decide): statuses by
    count, reason codes by count; the driver never reads the manifest for it."""
    statuses = sorted(counts["statuses"].items(), key=lambda kv: (-kv[1], kv[0]))
    reasons = sorted(counts["reasons"].items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))
    rows_in = sum(n for _, n in statuses)
    return {
        "rows_in": rows_in,
        "kept": counts["statuses"].get(Status.KEPT.value, 0),
        "statuses": dict(statuses),
        "reasons": [{"status": s, "reason": r, "count": n} for (s, r), n in reasons],
        "wall_seconds": round(wall_seconds, 2),
        "rows_per_second": round(rows_in / wall_seconds, 2) if wall_seconds > 0 else None,
    }


def retry_outcomes(counts: dict, passes: list[dict]) -> list[dict]:
    """What each `curate retry` pass recovered (curate.pipeline.passes): per pass, its reasons,
    the rows it fetched again, how many of them now have an image (``recovered``: any status
    but download_failed) and the statuses and failure reasons they ended with. A finished
    pass keeps the figures recorded at its end (a later pass may fetch its failures again);
    the others are counted now, from the decision's rows whose latest download is the pass's."""
    out = []
    for record in passes:
        outcome = record.get("outcome") if record.get("finished") else None
        if outcome is None:
            statuses: Counter = Counter()
            failed: Counter = Counter()
            for (number, status, code), rows in counts.get("retried", {}).items():
                if number == record["pass"]:
                    statuses[status] += rows
                    if status == Status.DOWNLOAD_FAILED.value:
                        failed[code] += rows
            outcome = {
                "recovered": sum(n for status, n in statuses.items() if status != Status.DOWNLOAD_FAILED.value),
                "statuses": dict(sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))),
                "still_failed": [{"reason": c, "count": n} for c, n in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))],
            }
        out.append({"pass": record["pass"], "reasons": record["reasons"], "retried": record["rows"], **outcome})
    return out


def save_summary(run: RunDir, summary: dict) -> None:
    storage.write_text(run.summary, json.dumps(summary, indent=2))


def print_summary(summary: dict, run_root: str, console: Console | None = None) -> None:
    """The summary table; statuses, reasons and the run path are shown literally
    (curate.core.textsafe), whatever text they hold."""
    console = console or Console()
    table = Table(title=literal(f"run summary: {run_root}"), show_lines=False)
    table.add_column("status")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    total = max(summary["rows_in"], 1)
    for status, count in summary["statuses"].items():
        table.add_row(literal(status, "bold"), "", str(count), f"{100 * count / total:.1f}%")
        for item in summary["reasons"]:
            if item["status"] == status:
                table.add_row("", literal(item["reason"]), str(item["count"]), f"{100 * item['count'] / total:.1f}%")
    print_full(console, table)
    console.print(
        f"{'documents' if summary.get('kind') == 'documents' else 'rows'} in: [bold]{summary['rows_in']}[/bold]  "
        f"kept: [bold green]{summary['kept']}[/bold green]  "
        f"wall time: {summary['wall_seconds']:.1f} s ({summary['rows_per_second']} rows/s)"
    )
    for item in summary.get("retries", []):
        failed = ", ".join(f"{f['reason']} {f['count']}" for f in item["still_failed"][:4]) or "none"
        rows = f"{item['retried']} row{'s' if item['retried'] != 1 else ''}"
        console.print(f"retry {item['pass']} ({', '.join(item['reasons'])}): fetched {rows} again, "
                      f"[bold green]{item['recovered']} recovered[/bold green]; "
                      f"now {', '.join(f'{s} {n}' for s, n in item['statuses'].items())}; still failed: {failed}")
    if summary.get("images"):
        console.print(literal("images of the documents: " + ", ".join(f"{s} {n}" for s, n in summary["images"].items())))
