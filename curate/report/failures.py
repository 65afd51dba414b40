"""The report's section on rows (or a documents run's images) that have no image: download
failures and blocked URLs, by reason, with example URLs."""

from __future__ import annotations

from curate.report import html, samples
from curate.schemas.status import Status


def failures_section(con, table: str = "manifest", what: str = "Rows",
                     retries: list[dict] | None = None) -> tuple[str, str]:
    """Download failures and blocked URLs of ``table`` (a documents run: ``manifest_images``,
    ``what`` = "Images"), by reason, with example URLs; first, what each `curate retry`
    recovered (``retries``: summary.json's "retries")."""
    body = [retries_table(retries)] if retries else []
    for status in (Status.DOWNLOAD_FAILED.value, Status.BLOCKED.value):
        rows = samples.failure_examples(con, status, table=table)
        if rows:
            for r in rows:
                r["examples"] = "  ".join("(no url)" if e is None else e for e in r["examples"])
            body.append(f"<h3>{html.badge(status)}</h3>" + html.table(rows, ["reason", "rows", "examples"]))
    if not body:
        body.append(html.note(f"Every {'image ' if table != 'manifest' else ''}URL passed the check and downloaded."))
    lead = "Rows without an image" if what == "Rows" else f"{what} without bytes"
    return f"{lead}: reasons with example URLs.", "".join(body)


def retries_table(retries: list[dict]) -> str:
    """What each `curate retry` pass fetched again and recovered, as HTML."""
    rows = [{"retry": r["pass"], "reasons": ", ".join(r["reasons"]), "rows fetched again": r["retried"],
             "recovered": r["recovered"], "now": ", ".join(f"{s} {n}" for s, n in r["statuses"].items()),
             "still failed": ", ".join(f"{f['reason']} {f['count']}" for f in r["still_failed"]) or "none"}
            for r in retries]
    return "<h3>Retries</h3>" + html.table(rows) + html.note(
        "What each <code>curate retry</code> fetched again and recovered (an image now; the row's "
        "<code>attempts</code> in the manifest counts its downloads).")
