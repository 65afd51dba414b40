"""Rows with the same URL become one sample: fetched once, the other rows' captions its alternates.

COCO gives five captions per image, one row each; web crawls repeat an image URL under many
alt-texts. Fetched row by row, the image was downloaded once per row and dedupe then threw
all but one copy away with its caption. Instead, the prepare step groups the rows it would
fetch by URL, over the whole run, as Ray tasks (no URL list on the driver):

1. each prepare task (one per input part, curate.pipeline.prepare) hashes its rows' URL keys
   into buckets; per URL it sends only the first rows of its first ``input.max_captions_per_url``
   distinct captions (:func:`write_candidates`): a URL repeated a million times costs its
   bucket a few rows per part, not a million;
2. a task per bucket groups its URLs over every part (:func:`group_bucket`): the row with the
   smallest sample_id is the URL's **representative**, the sample that is fetched; the first
   ``max_captions_per_url - 1`` other distinct captions, in the order their first rows come,
   are its **alternates**;
3. a task per input part (:func:`resolve_part`) gives each of its rows its verdict: the
   representative (downloaded, its alternates carried along as lists), ``same_url_as:<rep>``
   (its caption is one of the sample's, as the original or an alternate) or
   ``same_url_not_scored:<rep>`` (the sample had its fill of captions already).

The result depends only on the rows, never on how they are cut into parts, buckets or
partitions: the representative is the smallest sample_id and alternates go in sample_id
order.

A part prepared by an earlier pass (a resume that redoes a damaged part, ``curate run
--extend``) is *settled*: its rows' verdicts and its samples' alternates are committed (its
download list) and are not changed. Its rows still go to the buckets (read back from its
rows/ file), each fetched row with the captions its sample carries (``carried``), so that a
row of a part prepared now finds the sample of its URL: it is ``same_url_as`` that sample
when its caption is one the sample carries, else ``same_url_not_scored`` (with --extend, a
new caption of a URL scored before is not scored: docs/run-directory.md, Extend). A part
redone after damage gets the very verdicts it had: its rows are the same.

Two URLs are the same when a browser would request the same resource (:func:`url_key`);
captions are the same when they are equal with their whitespace folded, as a training
caption is written (:func:`caption_key`).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import storage
from curate.dedupe.partitioned import bucket_of
from curate.schemas import reasons as R
from curate.stages.cheap_filters import fold_whitespace

# What a prepare task sends a bucket: per URL, the first row of each of its first captions.
CANDIDATES = pa.schema([
    ("key", pa.string()), ("text", pa.string()), ("sample_id", pa.string()), ("caption", pa.string()),
    ("caption_bad_encoding", pa.bool_()), ("url_rows", pa.int64()), ("part", pa.string()),
    # A settled part's (prepared by an earlier pass): the caption keys its fetched row's
    # sample carries (its own, then its alternates); NULL for other rows.
    ("settled", pa.bool_()), ("carried", pa.list_(pa.string())),
])
# What a bucket sends back to each part holding one of its URLs (URLs of more than one row only).
GROUPS = pa.schema([
    ("key", pa.string()), ("rep_id", pa.string()),
    ("texts", pa.list_(pa.string())),  # the sample's captions (caption_key), its own first
    ("alternate_captions", pa.list_(pa.string())),
    ("alternate_caption_bad_encoding", pa.list_(pa.bool_())),
])


def url_key(url: str) -> str:
    """The resource a fetch URL names, as a browser requests it (WHATWG URL, via ada): scheme
    and host lower-cased, the default port dropped, dot segments resolved, non-ASCII
    percent-encoded; the fragment dropped, since it never reaches the server
    (``HTTP://Host.test:80/a/../b.jpg#x`` is ``http://host.test/b.jpg``). A URL ada can't
    parse is its own key."""
    import ada_url

    try:
        href = ada_url.URL(url).href
    except ValueError:
        return url
    return href.split("#", 1)[0]


def caption_key(caption: str | None) -> str:
    """A caption as the sample's captions compare: whitespace runs folded, trimmed."""
    return fold_whitespace(caption or "")


def _fetchable(rows: pa.Table, fetch: pa.Array, carried: dict[str, list[str]] | None) -> pa.Table:
    """(sample_id, key, text, caption, caption_bad_encoding, carried) of the rows that are
    not blocked (``carried``: see :func:`write_candidates`)."""
    keep = pc.is_null(rows.column("blocked_reason"))
    rows, fetch = rows.filter(keep), fetch.filter(keep)
    ids = rows.column("sample_id").to_pylist()
    return pa.table({
        "sample_id": rows.column("sample_id"),
        "key": pa.array([url_key(u) for u in fetch.to_pylist()], pa.string()),
        "text": pa.array([caption_key(c) for c in rows.column("caption").to_pylist()], pa.string()),
        "caption": rows.column("caption"),
        "caption_bad_encoding": rows.column("caption_bad_encoding"),
        "carried": pa.array([carried.get(i) for i in ids] if carried is not None else [None] * len(ids),
                            pa.list_(pa.string())),
    })


def carried_captions(listed: pa.Table) -> dict[str, list[str]]:
    """A settled part's download list (sample_id, caption, alternate_captions) -> sample_id
    -> the caption keys that sample carries: its own, then its alternates."""
    alternates = (listed.column("alternate_captions").to_pylist() if "alternate_captions" in listed.column_names
                  else [None] * listed.num_rows)  # a run prepared before rows were merged by URL
    return {sid: [caption_key(c)] + [caption_key(a) for a in more or []] for sid, c, more in
            zip(listed.column("sample_id").to_pylist(), listed.column("caption").to_pylist(), alternates)}


def write_candidates(rows: pa.Table, fetch: pa.Array, part: str, work: str, buckets: int, max_captions: int,
                     carried: dict[str, list[str]] | None = None) -> None:
    """Step 1, in a prepare task: per URL key of the part's fetchable ``rows`` (``fetch``: the
    URL each row fetches), the first row of each of its first ``max_captions`` distinct
    captions, with the URL's row count in the part, into ``work/in/b=<bucket>/part-<part>.parquet``.
    ``carried`` (a settled part, :func:`carried_captions`): what its fetched rows' samples
    carry; None for a part prepared now.

    The sample's captions are the first ``max_captions`` distinct captions of the URL over the
    whole run; each of those is among the first ``max_captions`` of the part holding its
    first row, so nothing a bucket needs is left out."""
    con = duckdb.connect()
    try:
        con.register("fetched", _fetchable(rows, fetch, carried))
        table = con.execute(f"""
            WITH firsts AS (SELECT key, text, min(sample_id) AS sample_id FROM fetched GROUP BY key, text),
                 numbered AS (SELECT *, row_number() OVER (PARTITION BY key ORDER BY sample_id) AS n FROM firsts),
                 counted AS (SELECT key, count(*) AS url_rows FROM fetched GROUP BY key)
            SELECT n.key, n.text, n.sample_id, f.caption, f.caption_bad_encoding, c.url_rows, ? AS part,
                   ? AS settled, f.carried
            FROM numbered n JOIN fetched f USING (sample_id) JOIN counted c ON c.key = n.key
            WHERE n.n <= {int(max_captions)} ORDER BY n.sample_id
        """, [part, carried is not None]).arrow().read_all().cast(CANDIDATES)
    finally:
        con.close()
    where = pa.array([bucket_of(k, buckets) for k in table.column("key").to_pylist()], pa.int64())
    for bucket in pc.unique(where).to_pylist():
        storage.write_parquet(storage.join(work, "in", f"b={bucket:05d}", f"part-{part}.parquet"),
                              table.filter(pc.equal(where, bucket)))


def group_bucket(bucket_dir: str, work: str, max_captions: int) -> int:
    """Step 2, a Ray task per bucket: the URLs of more than one row, over every part, each
    with its representative and captions (a settled representative's: those it carries),
    written for each part prepared now that holds the URL to
    ``work/out/part-<part>/<bucket>.parquet``. Returns the URLs grouped."""
    files = storage.list_files(bucket_dir, ".parquet")
    if not files:
        return 0
    con = duckdb.connect()
    try:
        con.register("candidates", storage.read_parquet(files))
        # First rows across parts: a caption's first row is its smallest sample_id anywhere.
        con.execute(f"""
            CREATE TABLE groups AS
            WITH texts AS (SELECT key, text, min(sample_id) AS first_id FROM candidates GROUP BY key, text),
                 totals AS (SELECT key, sum(url_rows) AS url_rows FROM (SELECT DISTINCT key, part, url_rows
                            FROM candidates) GROUP BY key),
                 ranked AS (SELECT t.*, row_number() OVER (PARTITION BY t.key ORDER BY first_id) AS n
                            FROM texts t JOIN totals USING (key) WHERE totals.url_rows > 1),
                 kept AS (SELECT r.*, c.caption, c.caption_bad_encoding FROM ranked r
                          JOIN candidates c ON c.sample_id = r.first_id WHERE r.n <= {int(max_captions)})
            SELECT g.key, g.rep_id, coalesce(r.carried, g.texts) AS texts, g.alternate_captions,
                   g.alternate_caption_bad_encoding
            FROM (SELECT key, min(first_id) AS rep_id, list(text ORDER BY n) AS texts,
                         list(caption ORDER BY n) FILTER (WHERE n > 1) AS alternate_captions,
                         list(caption_bad_encoding ORDER BY n) FILTER (WHERE n > 1) AS alternate_caption_bad_encoding
                  FROM kept GROUP BY key) g
                 LEFT JOIN candidates r ON r.sample_id = g.rep_id  -- a settled representative: what it carries
        """)
        grouped = con.execute("SELECT count(*) FROM groups").fetchone()[0]
        holders = con.execute("""
            SELECT DISTINCT c.part, g.* FROM groups g JOIN candidates c USING (key) WHERE NOT c.settled
            ORDER BY c.part, g.key
        """).arrow().read_all()
    finally:
        con.close()
    bucket = bucket_dir.rstrip("/").rsplit("/", 1)[-1]
    parts = holders.column("part")
    for part in pc.unique(parts).to_pylist():
        mine = holders.filter(pc.equal(parts, part)).select(GROUPS.names).cast(GROUPS)
        storage.write_parquet(storage.join(work, "out", f"part-{part}", f"{bucket}.parquet"), mine)
    return grouped


def resolve_part(rows: pa.Table, fetch: pa.Array, part: str, work: str) -> tuple[pa.Array, pa.Table]:
    """Step 3, in a task per input part prepared now: (``same_url_reason`` of each of
    ``rows``: NULL for a row that is its own sample; the alternates of each row:
    ``alternate_captions``, ``alternate_caption_bad_encoding``, NULL but for representatives
    that have some)."""
    files = storage.list_files(storage.join(work, "out", f"part-{part}"), ".parquet")
    groups = {g["key"]: g for g in storage.read_parquet(files).to_pylist()} if files else {}
    n = rows.num_rows
    reasons: list[str | None] = [None] * n
    captions: list[list[str] | None] = [None] * n
    flags: list[list[bool] | None] = [None] * n
    blocked = rows.column("blocked_reason").to_pylist()
    ids, texts = rows.column("sample_id").to_pylist(), rows.column("caption").to_pylist()
    for i, url in enumerate(fetch.to_pylist()):
        group = groups.get(url_key(url)) if blocked[i] is None and groups else None
        if group is None:
            continue
        if ids[i] == group["rep_id"]:
            captions[i], flags[i] = group["alternate_captions"], group["alternate_caption_bad_encoding"]
        elif caption_key(texts[i]) in group["texts"]:
            reasons[i] = R.SAME_URL_AS(group["rep_id"])
        else:
            reasons[i] = R.SAME_URL_NOT_SCORED(group["rep_id"])
    alternates = pa.table({"alternate_captions": pa.array(captions, pa.list_(pa.string())),
                           "alternate_caption_bad_encoding": pa.array(flags, pa.list_(pa.bool_()))})
    return pa.array(reasons, pa.string()), alternates
