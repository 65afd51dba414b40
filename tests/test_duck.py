"""DuckDB views over a run's Parquet parts (curate.core.duck)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import duck

SCHEMA = pa.schema([("sample_id", pa.string()), ("key", pa.string()), ("emb", pa.list_(pa.float32()))])


def test_latest_copy_view_keeps_one_row_per_sample_from_the_first_file(tmp_path):
    # part-b is a retried batch committed after part-a: two of its rows are already in part-a
    # (marked here by another key, to see which copy the view keeps).
    pq.write_table(pa.table({"sample_id": ["s1", "s2", "s3"], "key": ["a", "a", "a"],
                             "emb": [[1.0], [2.0], [3.0]]}, schema=SCHEMA), tmp_path / "part-a.parquet")
    pq.write_table(pa.table({"sample_id": ["s2", "s3", "s4"], "key": ["b", "b", "b"],
                             "emb": [[2.0], [3.0], [4.0]]}, schema=SCHEMA), tmp_path / "part-b.parquet")
    con = duck.connect(str(tmp_path))
    duck.create_latest_copy_view(con, "scored", sorted(str(p) for p in tmp_path.glob("*.parquet")), SCHEMA)
    rows = con.execute("SELECT * FROM scored ORDER BY sample_id").fetchall()
    assert rows == [("s1", "a", [1.0], 1), ("s2", "a", [2.0], 1), ("s3", "a", [3.0], 1), ("s4", "b", [4.0], 1)]
    assert [d[0] for d in con.execute("SELECT * FROM scored").description] == ["sample_id", "key", "emb", "attempt"]


def test_latest_copy_view_prefers_a_rows_latest_download(tmp_path):
    # part-a: the first download (no attempt column); retry-01 and retry-02: `curate retry`
    # downloaded s2 and s3 again, then s3 once more. Names sort the retries after part-a but
    # the choice must follow `attempt`, not the name: retry-02 is written as "0-..." to check.
    pq.write_table(pa.table({"sample_id": ["s1", "s2", "s3"], "key": ["a", "a", "a"],
                             "emb": [[1.0], [2.0], [3.0]]}, schema=SCHEMA), tmp_path / "part-a.parquet")
    retried = SCHEMA.append(pa.field("attempt", pa.int64()))
    pq.write_table(pa.table({"sample_id": ["s2", "s3"], "key": ["r1", "r1"], "emb": [[2.0], [3.0]], "attempt": [2, 2]},
                            schema=retried), tmp_path / "retry-01.parquet")
    pq.write_table(pa.table({"sample_id": ["s3"], "key": ["r2"], "emb": [[3.0]], "attempt": [3]},
                            schema=retried), tmp_path / "0-retry-02.parquet")
    con = duck.connect(str(tmp_path))
    duck.create_latest_copy_view(con, "scored", sorted(str(p) for p in tmp_path.glob("*.parquet")), SCHEMA)
    rows = con.execute("SELECT sample_id, key, attempt FROM scored ORDER BY sample_id").fetchall()
    assert rows == [("s1", "a", 1), ("s2", "r1", 2), ("s3", "r2", 3)]


def test_latest_copy_view_of_no_parts_is_empty_with_the_schema(tmp_path):
    con = duck.connect(str(tmp_path))
    duck.create_latest_copy_view(con, "scored", [], SCHEMA)
    assert con.execute("SELECT count(*) FROM scored").fetchone() == (0,)
    assert [d[0] for d in con.execute("SELECT * FROM scored").description] == ["sample_id", "key", "emb"]
