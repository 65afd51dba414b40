"""Step 1: read every input row, give it a sample_id, block what must not be fetched, and
fetch each URL once.

Three phases of Ray tasks; the driver holds the lists of parts and buckets and their counts,
nothing that grows with the rows:

1. one task per input part (an input file, or a run of row groups of a large Parquet file:
   curate.core.inputs.plan_input_parts) reads the part through the run's kind, checks every
   URL, and writes ``RUN/rows/part-FFFFF-SSSS.parquet`` (every image row, with
   ``blocked_reason``; a documents run also writes ``RUN/documents/``). A pairs run that
   merges rows with the same URL (``input.merge_same_url``) also sends each URL's first rows
   to a bucket by the URL's hash (curate.pipeline.same_url); so does every part an earlier
   pass prepared (a resume, ``--extend``), read back from its rows/ file;
2. one task per bucket groups its URLs over every part: a representative and its alternate
   captions per URL of more than one row;
3. one task per input part gives each row its URL verdict (``same_url_reason`` in its rows/
   file: a row whose URL another row fetches) and writes the rows to download as
   ``RUN/download_list/part-FFFFF-SSSS-KKKKK`` parts of at most ``download.shard_size`` rows
   (one part becomes one download shard, the unit of download resume), each representative
   with its alternates' captions.

Every file in rows/, documents/ and download_list/ is written with its commit record
(curate.core.commits), checked before a resume trusts it (curate.pipeline.resume_check). A
part is committed by two markers: ``RUN/_done/prepare-rows/<part>.json`` after phase 1 and
``RUN/_done/prepare-parts/<part>.json`` after phase 3 (its counts and download-list parts),
so a resumed run redoes only what has none. The buckets' files (``RUN/_same_url/``) belong
to one pass of the step: made again by a resumed one, removed when the step ends.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import commits, storage
from curate.core.config import DownloadConfig
from curate.core.inputs import InputError, InputFile, InputPart, plan_input_parts
from curate.core.rundir import RunDir
from curate.flow.kind import Kind
from curate.flow.plan import Plan
from curate.pipeline import same_url
from curate.schemas import reasons as R
from curate.schemas.columns import BLOCKED_REASON, SAME_URL_REASON
from curate.download.browser_url import browser_url
from curate.download.precheck import check_url

TASK_CPUS = 0.5
SCRATCH = "_same_url"  # RUN/_same_url/: the URL buckets' files, removed when the step ends
# The markers of a prepared part under RUN/_done/: its rows/ file written (phase 1); the
# part committed whole, with its download-list parts (phase 3).
ROWS_MARKERS = "prepare-rows"
PART_MARKERS = "prepare-parts"


def _with_precheck(rows: pa.Table, download: DownloadConfig) -> tuple[pa.Table, pa.Array]:
    """(rows with ``blocked_reason``, the URL to fetch for each row). The check judges the
    URL as a browser would request it (curate.download.browser_url); rows keep the input's."""
    allow, networks = download.allow_private_hosts, tuple(download.allowed_networks)
    fetch = [browser_url(u) for u in rows.column("url").to_pylist()]
    reasons = [R.URL_INVALID() if f is None and u else check_url(f, allow, networks)
               for u, f in zip(rows.column("url").to_pylist(), fetch)]
    return rows.append_column(BLOCKED_REASON, pa.array(reasons, pa.string())), pa.array(fetch, pa.string())


def _marker(run: RunDir, phase: str, name: str) -> str:
    return storage.join(run.root, "_done", phase, f"{name}.json")


def part_marker(run: RunDir, part: InputPart) -> str:
    """The marker of a part prepared whole: ``{"part", "rows", "blocked", "merged", "download_parts"}``."""
    return _marker(run, PART_MARKERS, part.name)


def _rows_uri(run: RunDir, part: InputPart) -> str:
    return storage.join(run.rows, f"part-{part.name}.parquet")


def _committed(marker: str, work) -> dict:
    """``work()``'s counts, once: a task committed by an earlier attempt is not redone."""
    if storage.exists(marker):
        return json.loads(storage.read_text(marker))
    started = time.perf_counter()
    counts = {**work(), "seconds": round(time.perf_counter() - started, 3)}
    storage.write_text(marker, json.dumps(counts))
    return counts


def _fetch_urls(rows: pa.Table) -> pa.Array:
    """The URL each row fetches: as a browser would request it (curate.download.browser_url)."""
    return pa.array([browser_url(u) for u in rows.column("url").to_pylist()], pa.string())


def _carried(run: RunDir, part: InputPart) -> dict[str, list[str]]:
    """A settled part's samples -> the captions each carries, from its download list
    (same_url.carried_captions)."""
    names = json.loads(storage.read_text(part_marker(run, part)))["download_parts"]
    uris = [storage.join(run.download_list, name) for name in names]
    if not uris:
        return {}
    listed = storage.read_parquet(uris)
    return same_url.carried_captions(listed.select([c for c in ("sample_id", "caption", "alternate_captions")
                                                    if c in listed.column_names]))


def read_part(kind: Kind, run: RunDir, part: InputPart, buckets: int, settled: bool) -> dict:
    """Phase 1 (Ray task): one input part -> its rows/ file (once), and (``buckets`` > 0) its
    URLs' first rows to the buckets. A ``settled`` part (prepared whole by an earlier pass)
    only sends its rows, read back from rows/, with what its samples carry. ``{"part", "rows"}``."""
    uri = _rows_uri(run, part)
    read: list[pa.Table] = []

    def work() -> dict:
        rows, _ = _with_precheck(kind.read(part, run), kind.cfg.download)
        for field in kind.rows_schema:  # decided in phase 3 (same_url_reason)
            if field.name not in rows.column_names:
                rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
        commits.write_parquet(uri, rows)  # + its commit record
        read.append(rows)
        return {"part": part.name, "rows": rows.num_rows}

    counts = {"part": part.name} if settled else _committed(_marker(run, ROWS_MARKERS, part.name), work)
    if buckets:  # this pass's buckets: rows read now, or read back (an earlier pass or attempt wrote them)
        rows = read[0] if read else storage.read_parquet([uri])
        same_url.write_candidates(rows, _fetch_urls(rows), part.name, storage.join(run.root, SCRATCH), buckets,
                                  kind.cfg.input.max_captions_per_url, _carried(run, part) if settled else None)
    return counts


def group_urls(run: RunDir, bucket: int, max_captions: int) -> dict:
    """Phase 2 (Ray task): one bucket's URLs grouped over every part (curate.pipeline.same_url).
    No marker: the buckets are this pass's own, made again by a resumed one."""
    work = storage.join(run.root, SCRATCH)
    name = f"b={bucket:05d}"
    return {"bucket": name, "urls": same_url.group_bucket(storage.join(work, "in", name), work, max_captions)}


def list_part(kind: Kind, run: RunDir, part: InputPart) -> dict:
    """Phase 3 (Ray task): the part's URL verdicts into its rows/ file and its rows to
    download into download-list parts; commits the part (``part_marker``).
    ``{"part", "rows", "blocked", "merged", "download_parts"}``."""

    def work() -> dict:
        uri = _rows_uri(run, part)
        rows = storage.read_parquet([uri])
        fetch = _fetch_urls(rows)
        keep = pc.is_null(rows.column(BLOCKED_REASON.name))
        carried = pa.table({f.name: pa.nulls(rows.num_rows, f.type) for f in kind.carried})
        merged = 0
        if kind.merges_same_url:
            reasons, carried = same_url.resolve_part(rows, fetch, part.name, storage.join(run.root, SCRATCH))
            merged = len(reasons) - reasons.null_count
            if merged:  # a resumed task finds its own verdicts there: the same ones again
                rows = rows.set_column(rows.schema.get_field_index(SAME_URL_REASON.name), SAME_URL_REASON, reasons)
                commits.write_parquet(uri, rows)
            keep = pc.and_(keep, pc.is_null(reasons))
        fetched = rows.set_column(rows.schema.get_field_index("url"), "url", fetch)
        for field in kind.carried:
            fetched = fetched.append_column(field, carried.column(field.name))
        to_fetch = fetched.filter(keep).select(list(kind.download_columns))
        size = kind.cfg.download.shard_size
        names = [f"part-{part.name}-{k:05d}.parquet" for k in range(-(-to_fetch.num_rows // size))]
        for k, name in enumerate(names):
            commits.write_parquet(storage.join(run.download_list, name), to_fetch.slice(k * size, size))
        return {"part": part.name, "rows": rows.num_rows, "blocked": pc.count(rows.column(BLOCKED_REASON.name)).as_py(),
                "merged": merged, "download_parts": names}

    return _committed(part_marker(run, part), work)


def _remote(fn):
    import ray

    return ray.remote(num_cpus=TASK_CPUS, max_retries=2, retry_exceptions=[OSError])(fn)


def prepare(plan: Plan, run: RunDir, files: list[InputFile]) -> dict:
    """Prepare every input part in the three phases above, as Ray tasks; returns the run's
    counts. Parts committed by an earlier pass are kept as they are (a resume, ``--extend``).
    A part that can't be read stops the run with its InputError (the parts' own messages
    name file and row)."""
    import ray

    kind = plan.kind
    # Parts of about a partition of the manifest step (a partition is whole parts).
    parts = plan_input_parts(files, plan.cfg.input, plan.cfg.manifest.partition_rows)
    settled = {p.name for p in parts if storage.exists(part_marker(run, p))}
    todo = [p for p in parts if p.name not in settled]
    # Buckets only when some part gets its verdicts now; they hold every part's rows.
    buckets = len(parts) if kind.merges_same_url and todo else 0
    scratch = storage.join(run.root, SCRATCH)
    storage.remove_tree(scratch)  # an interrupted pass's buckets: made again whole
    sent = [p for p in parts if p.name not in settled or buckets]
    try:
        read = ray.get([_remote(read_part).remote(kind, run, p, buckets, p.name in settled) for p in sent])
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, InputError):
            raise error.cause from None  # the input's own message, not a remote traceback
        raise
    grouped = ray.get([_remote(group_urls).remote(run, b, plan.cfg.input.max_captions_per_url) for b in range(buckets)])
    results = ray.get([_remote(list_part).remote(kind, run, part) for part in parts])
    storage.remove_tree(scratch)
    return {
        "rows": sum(r["rows"] for r in results),
        "blocked": sum(r["blocked"] for r in results),
        "merged": sum(r.get("merged", 0) for r in results),  # a part prepared before rows were merged: none
        # benchmarks: work done in tasks
        "task_seconds": round(sum(r.get("seconds", 0.0) for r in [*read, *grouped, *results]), 3),
        "parts": [{"part": r["part"], "rows": r["rows"], "download_parts": r["download_parts"]} for r in results],
    }
