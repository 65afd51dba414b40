"""Input reading: every format, glob and folder inputs, odd encodings, clear errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.config import InputConfig, load_config
from curate.core.inputs import InputError, read_input_file, resolve_input_files
from curate.pipeline.runner import run_pipeline

ROWS = [
    {"link": "http://example.com/1.jpg", "alt": "a red bicycle"},
    {"link": "http://example.com/2.jpg", "alt": "comma, \"quoted\" caption"},
    {"link": None, "alt": None},
]


def write(fmt: str, path) -> None:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        sep = "," if fmt == "csv" else "\t"
        quote = lambda v: "" if v is None else ('"' + v.replace('"', '""') + '"' if sep in v or '"' in v else v)
        path.write_text("link" + sep + "alt\n" + "".join(quote(r["link"]) + sep + quote(r["alt"]) + "\n" for r in ROWS))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"in.{fmt}"
    write(fmt, path)
    cfg = InputConfig(path=str(path), format=fmt, url_col="link", caption_col="alt")
    files = resolve_input_files(cfg)
    table = read_input_file(files[0], cfg)
    assert table.column("url").to_pylist() == [r["link"] for r in ROWS]
    assert table.column("caption").to_pylist() == [r["alt"] for r in ROWS]
    assert table.column("sample_id").to_pylist() == ["00000-0000000000", "00000-0000000001", "00000-0000000002"]


def test_glob_and_folder_order_files_and_number_them(tmp_path):
    for name in ("b.csv", "a.csv", "notes.txt"):
        (tmp_path / name).write_text("url,caption\nhttp://x.org/1.jpg,one two\n")
    by_folder = resolve_input_files(InputConfig(path=str(tmp_path), format="csv"))
    by_glob = resolve_input_files(InputConfig(path=str(tmp_path / "*.csv"), format="csv"))
    assert [f.uri.rsplit("/", 1)[1] for f in by_folder] == ["a.csv", "b.csv"]
    assert [f.uri for f in by_glob] == [f.uri for f in by_folder] and [f.index for f in by_glob] == [0, 1]


def test_non_utf8_caption_is_flagged_not_fatal(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"url,caption\nhttp://x.org/1.jpg,caf\xe9 au lait\nhttp://x.org/2.jpg,fine caption\n")
    cfg = InputConfig(path=str(path), format="csv")
    table = read_input_file(resolve_input_files(cfg)[0], cfg)
    assert table.column("caption_bad_encoding").to_pylist() == [True, False]
    assert table.column("caption").to_pylist()[0] == "caf\ufffd au lait"


def test_missing_column_names_the_key_and_the_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("link,caption\nhttp://x.org/1.jpg,a b\n")
    cfg = InputConfig(path=str(path), format="csv")
    with pytest.raises(InputError, match=r"input.url_col: column 'url' not found .*\['link', 'caption'\]"):
        read_input_file(resolve_input_files(cfg)[0], cfg)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_input_files(InputConfig(path=str(tmp_path / "nope.csv"), format="csv"))
    with pytest.raises(InputError, match="no csv files"):
        resolve_input_files(InputConfig(path=str(tmp_path), format="csv"))


def test_malformed_file_stops_at_start_with_nothing_written(tmp_path, ray_session):
    bad = tmp_path / "in.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    cfg = load_config(None, [f"input.path={bad}"], out=str(tmp_path / "run"))
    with pytest.raises(InputError, match=r"in.parquet is not valid parquet"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
