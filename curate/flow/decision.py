"""The decision: every row's status and reason, generated from rules, evaluated by DuckDB.

Nothing here names a stage. The status/reason ``CASE`` of every image row is generated from
the base rules below, each enabled stage's image rules and the kind's image rules, first
match wins. The kind then decides its units (a pair's captions: CapFilt; a document's
images: placement), the global stages (dedupe) find what they find among the samples still
kept, and their rules make the final status. The decision reads stored columns only, so
``curate refilter`` re-decides a finished run at new thresholds without a model.

DuckDB names, for every kind:
- views ``rows`` (RUN/rows/), ``scored`` (RUN/scored/, one row per sample_id) and ``joined``
  (every input row with its scored columns; ``_downloaded`` says whether it was scored);
- table ``image_decisions`` (sample_id, status, reason) after the image rules;
- table ``decided`` after the kind's unit decision (+ ``chosen_clip_score``,
  ``chosen_itm_prob``: the scores of the text that goes with each image);
- a table per global stage, named by its key, and ``final`` (sample_id, status, reason and
  the global stages' columns).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from curate.core import duck, storage
from curate.core.rundir import RunDir
from curate.schemas import reasons as R
from curate.schemas.status import Status
from curate.stages.base import GlobalStage, Rule

if TYPE_CHECKING:
    from curate.core.progress import Progress
    from curate.flow.kind import Plan

KEPT = Status.KEPT.sql
# Refusals at download time that mean "must not be fetched", like the precheck's: blocked.
BLOCKED_AT_DOWNLOAD = (R.PRIVATE_HOST, R.REDIRECT_TO_PRIVATE_HOST, R.SCHEME_NOT_ALLOWED)
DOWNLOAD_CODES = tuple(c for c in R.CODES if c.status is Status.DOWNLOAD_FAILED and c is not R.MISSING_FROM_DOWNLOADER)

BASE_RULES = [
    Rule("blocked_reason IS NOT NULL", "blocked_reason",
         (R.URL_MISSING, R.URL_INVALID, R.SCHEME_NOT_ALLOWED, R.PRIVATE_HOST), Status.BLOCKED),
    Rule(f"split_part(download_reason, ':', 1) IN ({', '.join(c.sql() for c in BLOCKED_AT_DOWNLOAD)})",
         "download_reason", BLOCKED_AT_DOWNLOAD, Status.BLOCKED),
    Rule.fixed("NOT _downloaded", R.MISSING_FROM_DOWNLOADER),
    Rule("download_reason IS NOT NULL", "download_reason", DOWNLOAD_CODES, Status.DOWNLOAD_FAILED),
]
# The scored columns `joined` leaves out: the input's own copies (rows/ has them) and the
# downloader's raw verdict (the inspect stage's download_reason replaces it).
_SCORED_DUPLICATES = ("sample_id", "url", "caption", "caption_bad_encoding", "status", "error_message")


# The manifest's ``attempts`` over ``joined``: a row's downloads so far (curate retry adds one).
ATTEMPTS_SQL = "CASE WHEN _downloaded THEN coalesce(attempt, 1) WHEN blocked_reason IS NULL THEN 1 ELSE 0 END::INTEGER"


def case_sql(rules: list[Rule], prior: str | None = None) -> tuple[str, str]:
    """(status, reason) SQL for ``rules``, first match wins; no match: kept, NULL reason.
    ``prior``: a table alias whose status/reason stand when not kept (a later decision)."""
    status, reason = ["CASE"], ["CASE"]
    if prior:
        status.append(f"WHEN {prior}.status <> {KEPT} THEN {prior}.status")
        reason.append(f"WHEN {prior}.status <> {KEPT} THEN {prior}.reason")
    for rule in rules:
        status.append(f"WHEN ({rule.when}) THEN {rule.status.sql}")
        reason.append(f"WHEN ({rule.when}) THEN {rule.reason}")
    return " ".join(status + [f"ELSE {KEPT} END"]), " ".join(reason + ["ELSE NULL END"])


@dataclass(frozen=True)
class PartitionFiles:
    """The run-directory files one partition of sample_ids reads: its RUN/rows/ parts, its
    RUN/scored/ parts (those of its download shards) and, for documents, its RUN/documents/ parts."""

    rows: tuple[str, ...]
    scored: tuple[str, ...]
    documents: tuple[str, ...] = ()


def open_views(root: str, plan: Plan, files: PartitionFiles):
    """A DuckDB connection with the views ``rows``, ``scored`` and ``joined`` over ``files``."""
    con = duck.connect(root, spill_over=plan.cfg.manifest.memory_limit)
    duck.create_parquet_view(con, "rows", list(files.rows), plan.kind.rows_schema)
    duck.create_latest_copy_view(con, "scored", list(files.scored), plan.scored_schema())
    con.execute(f"""
        CREATE OR REPLACE VIEW joined AS
        SELECT r.*, s.* EXCLUDE ({', '.join(_SCORED_DUPLICATES)}), s.sample_id IS NOT NULL AS _downloaded
        FROM rows r LEFT JOIN scored s USING (sample_id)
    """)
    return con


def whole_run_files(run: RunDir) -> PartitionFiles:
    """Every file of the run as one partition (a small run's checks, tests)."""
    return PartitionFiles(tuple(storage.list_files(run.rows, ".parquet")),
                          tuple(storage.list_files(run.scored, ".parquet", recursive=True)),
                          tuple(storage.list_files(run.documents, ".parquet")))


def open_run_views(run: RunDir, plan: Plan):
    """``open_views`` over the whole run."""
    return open_views(run.root, plan, whole_run_files(run))


def missing_scored_columns(con, plan: Plan) -> list[str]:
    """Columns the enabled stages write that RUN/scored/ does not have (a stage that did not run).
    A document's per-text scores count only for a kind that reads them."""
    have = {row[0] for row in con.execute("SELECT column_name FROM (DESCRIBE scored)").fetchall()}
    unread = set() if plan.kind.reads_text_scores else {c for s in plan.batch for c in s.text_columns.values()}
    return [name for stage in plan.batch for name in stage.writes.names if name not in have and name not in unread]


def image_rules(plan: Plan) -> list[Rule]:
    """Every rule over an image row, in the order they apply: blocked, the kind's rows it did
    not fetch (pairs: another row fetches its URL), download failures, the stages' image
    rules, the kind's image rules."""
    return BASE_RULES[:1] + plan.kind.unfetched_rules() + BASE_RULES[1:] + plan.rules("image") + plan.kind.image_rules()


def decide_units(con, plan: Plan) -> None:
    """Tables ``image_decisions`` (the image rules) and ``decided`` (the kind's units)."""
    status, reason = case_sql(image_rules(plan))
    con.execute(f"CREATE OR REPLACE TABLE image_decisions AS SELECT sample_id, {status} AS status, "
                f"{reason} AS reason FROM joined")
    plan.kind.decide(con, plan)  # -> decided


def candidates_sql(stage: GlobalStage) -> str:
    """The rows a global stage sees: every sample still kept, with its ``candidates()`` columns."""
    exprs = "".join(f", {sql} AS {name}" for name, sql in stage.candidates().items())
    return (f"SELECT sample_id {exprs} FROM joined j JOIN decided d USING (sample_id) "
            f"WHERE d.status = {KEPT} ORDER BY sample_id")


def apply_globals(con, plan: Plan, found: dict[str, str]) -> None:
    """Table ``final``: ``decided`` with each global stage's rules applied. ``found`` maps a
    global stage's key to a relation (table or view name) holding what it found."""
    joins = "".join(f" LEFT JOIN {found[stage.key]} AS {stage.key} USING (sample_id)" for stage in plan.globals)
    status, reason = case_sql(plan.rules("global"), prior="d")
    extra = "".join(f", {stage.key}.{name}" for stage in plan.globals for name in stage.writes.names)
    con.execute(f"CREATE OR REPLACE TABLE final AS SELECT d.sample_id, {status} AS status, {reason} AS reason"
                f"{extra} FROM decided d{joins}")


def decide(run: RunDir, plan: Plan, progress: Progress | None = None):
    """A DuckDB connection holding ``final`` for the whole run, in this process: every row
    decided, each global stage's in-memory ``find`` included. For checks and small runs; a
    run decides per partition (curate.pipeline.decide)."""
    con = open_run_views(run, plan)
    decide_units(con, plan)
    found = {}
    for stage in plan.globals:
        candidates = duck.fetch_table(con, candidates_sql(stage))
        with followed(progress, stage.key, candidates.num_rows) as advance:
            table = stage.find(candidates, advance)
        con.register(f"{stage.key}_arrow", table)
        con.execute(f"CREATE OR REPLACE TABLE {stage.key}_found AS SELECT * FROM {stage.key}_arrow")
        con.unregister(f"{stage.key}_arrow")
        found[stage.key] = f"{stage.key}_found"
    apply_globals(con, plan, found)
    return con


@contextmanager
def followed(progress: Progress | None, name: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(rows)`` of a progress part (a no-op when nobody follows)."""
    if progress is None:
        yield lambda rows: None
        return
    with progress.part(name, total=total) as advance:
        yield advance
