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
    elif fmt == "csv":
        quote = lambda v: "" if v is None else ('"' + v.replace('"', '""') + '"' if "," in v or '"' in v else v)
        path.write_text("link,alt\n" + "".join(quote(r["link"]) + "," + quote(r["alt"]) + "\n" for r in ROWS))
    else:  # TSV has no quoting: cells are written as they are
        path.write_text("link\talt\n" + "".join((r["link"] or "") + "\t" + (r["alt"] or "") + "\n" for r in ROWS))


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


def test_a_broken_cell_in_a_utf8_file_is_flagged_not_fatal(tmp_path):
    """A UTF-8 file (it has UTF-8 beyond ASCII: "naïve") with one cell that is not: that
    row is flagged (caption_bad_encoding), the others are read as they are. (A file whose
    non-ASCII bytes are never UTF-8 is in another encoding: see test_input_wild.py.)"""
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"url,caption\nhttp://x.org/1.jpg,caf\xe9 au lait\nhttp://x.org/2.jpg,na\xc3\xafve caption\n")
    cfg = InputConfig(path=str(path), format="csv")
    table = read_input_file(resolve_input_files(cfg)[0], cfg)
    assert table.column("caption_bad_encoding").to_pylist() == [True, False]
    assert table.column("caption").to_pylist() == ["caf\ufffd au lait", "na\u00efve caption"]


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


# -- TSV: no quoting (CC3M/YFCC-style files, pandas #21695) ------------------------------


def _read(path, fmt: str | None = None, **settings):
    cfg = InputConfig(path=str(path), format=fmt, **settings) if fmt else load_config(
        None, [f"input.path={path}"] + [f"input.{k}={v}" for k, v in settings.items()], out="unused").input
    return read_input_file(resolve_input_files(cfg)[0], cfg)


def test_tsv_quotes_are_text_one_row_per_line(tmp_path):
    """The issue's file: a caption opening a quote that a later line closes. pyarrow's
    quoting merged the three lines into one row; TSV has no quoting."""
    path = tmp_path / "cc3m.tsv"
    path.write_text('caption\turl\n"abc\tURL0\ndef\tURL1\nghi" jkl\tURL2\n')
    table = _read(path, "tsv")
    assert table.column("caption").to_pylist() == ['"abc', "def", 'ghi" jkl']
    assert table.column("url").to_pylist() == ["URL0", "URL1", "URL2"]


def test_tsv_neighbours_quoted_cells_crlf_and_a_stray_tab(tmp_path):
    path = tmp_path / "quotes.tsv"
    path.write_bytes(b'url\tcaption\r\nU0\t"a fully quoted caption"\r\nU1\tsay ""hi""\r\nU2\t"\r\nU3\tends with a quote"\r\n')
    table = _read(path, "tsv")
    assert table.column("caption").to_pylist() == ['"a fully quoted caption"', 'say ""hi""', '"', 'ends with a quote"']
    assert table.column("url").to_pylist() == ["U0", "U1", "U2", "U3"]
    stray = tmp_path / "stray.tsv"
    stray.write_text("url\tcaption\nU0\tone\nU1\ttwo\twith a tab\n")
    with pytest.raises(InputError, match=r"stray.tsv is not valid tsv: .*Expected 2 columns, got 3"):
        _read(stray, "tsv")


# -- NA / null / NaN are captions, not missing values (transformers #28286) -------------

SPELLINGS = ["NA", "N/A", "null", "NULL", "NaN", "nan", "#N/A", "None", "-NaN", "1.#QNAN"]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_null_spellings_stay_text_only_empty_cells_are_missing(tmp_path, fmt):
    sep = "," if fmt == "csv" else "\t"
    cells = SPELLINGS + ['"NA"' if fmt == "csv" else "NA", ""] + (['""'] if fmt == "csv" else [])
    path = tmp_path / f"na.{fmt}"
    path.write_text(f"url{sep}caption\n" + "".join(f"http://x.org/{i}.jpg{sep}{c}\n" for i, c in enumerate(cells)))
    captions = _read(path, fmt).column("caption").to_pylist()
    assert captions == SPELLINGS + ["NA", None] + ([None] if fmt == "csv" else [])


def test_null_spellings_in_the_url_column_are_urls_not_missing(tmp_path):
    path = tmp_path / "na-url.csv"
    path.write_text("url,caption\nNA,a caption\n,no url\n")
    assert _read(path, "csv").column("url").to_pylist() == ["NA", None]


# -- compressed inputs: .gz, .bz2, .zst read as their inner format (img2dataset PR #326) --

CSV_TEXT = "url,caption\nhttp://x.org/1.jpg,a red bicycle\nhttp://x.org/2.jpg,NA\n"


def _compress(data: bytes, suffix: str) -> bytes:
    import bz2
    import gzip

    if suffix == ".gz":
        return gzip.compress(data)
    if suffix == ".bz2":
        return bz2.compress(data)
    return _zstd(data)


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst", ".zstd"])
def test_compressed_csv_is_read_as_csv_format_from_the_inner_extension(tmp_path, suffix):
    path = tmp_path / f"urls.csv{suffix}"
    path.write_bytes(_compress(CSV_TEXT.encode(), suffix))
    table = _read(path)  # input.format inferred: csv
    assert table.column("url").to_pylist() == ["http://x.org/1.jpg", "http://x.org/2.jpg"]
    assert table.column("caption").to_pylist() == ["a red bicycle", "NA"]


def test_compressed_tsv_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.tsv.gz").write_bytes(_compress(b'url\tcaption\nU0\t"quoted\n', ".gz"))
    assert _read(tmp_path / "a.tsv.gz").column("caption").to_pylist() == ['"quoted']
    (tmp_path / "b.jsonl.zst").write_bytes(_zstd(b'{"url": "U0", "caption": "NA"}\n{"url": "U1", "caption": null}\n'))
    assert _read(tmp_path / "b.jsonl.zst").column("caption").to_pylist() == ["NA", None]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), sink)
    (tmp_path / "c.parquet.bz2").write_bytes(_compress(sink.getvalue().to_pybytes(), ".bz2"))
    table = _read(tmp_path / "c.parquet.bz2", url_col="link", caption_col="alt")
    assert table.column("caption").to_pylist() == [r["alt"] for r in ROWS]


def test_a_folder_lists_compressed_and_plain_files_of_the_format(tmp_path):
    (tmp_path / "a.csv").write_text(CSV_TEXT)
    (tmp_path / "b.csv.gz").write_bytes(_compress(CSV_TEXT.encode(), ".gz"))
    (tmp_path / "c.tsv.gz").write_bytes(_compress(b"url\tcaption\n", ".gz"))
    (tmp_path / "notes.txt.gz").write_bytes(_compress(b"x", ".gz"))
    files = resolve_input_files(InputConfig(path=str(tmp_path), format="csv"))
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.csv.gz"]
    assert [f.uri.rsplit("/", 1)[1] for f in resolve_input_files(InputConfig(path=str(tmp_path / "*.csv.gz"), format="csv"))] == ["b.csv.gz"]


def test_an_unknown_compression_names_the_supported_ones(tmp_path):
    with pytest.raises(Exception, match=r"cannot infer the format of .*urls.csv.xz.*\.gz, \.bz2, \.zst") as raised:
        load_config(None, [f"input.path={tmp_path / 'urls.csv.xz'}"], out=str(tmp_path / "run"))
    assert "\n  input.format: cannot infer" in str(raised.value)  # the key it names, not pydantic's wording
    assert "Value error" not in str(raised.value) and "(top level)" not in str(raised.value)


def test_a_truncated_gzip_is_a_clear_input_error(tmp_path):
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(_compress(CSV_TEXT.encode() * 50, ".gz")[:60])
    with pytest.raises(InputError, match=r"cut.csv.gz is not valid csv"):
        _read(path)


# -- text encodings: non-UTF-8 files are named, not crashed on (orange3 #7000) -----------


def test_windows_1252_csv_is_an_error_naming_file_offset_and_encoding(tmp_path):
    """The issue's file: Excel on Windows, header `url,caption,crédit`, accents in captions."""
    path = tmp_path / "excel.csv"
    path.write_bytes("url,caption,crédit\nhttp://x.org/1.jpg,café crème,Jérôme\n".encode("cp1252"))
    with pytest.raises(InputError) as caught:
        _read(path, "csv")
    message = str(caught.value)
    assert str(path) in message and "is not utf-8" in message
    assert "byte 0xE9 at offset 14 (line 1)" in message  # the é of crédit
    assert "it looks like cp1252" in message and "set input.encoding: cp1252" in message


def test_ascii_header_and_windows_1252_captions_name_the_first_bad_byte(tmp_path):
    path = tmp_path / "captions.csv"
    data = b"url,caption\nhttp://x.org/1.jpg,plain\nhttp://x.org/2.jpg,caf\xe9 cr\xe8me\n"
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"byte 0xE9 at offset {data.index(bytes([0xE9]))} \(line 3\).*cp1252"):
        _read(path, "csv")


def test_input_encoding_reads_the_file(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("url,caption,crédit\nhttp://x.org/1.jpg,café crème – “quoted”,Jérôme\n".encode("cp1252"))
    table = _read(path, encoding="cp1252")
    assert table.column("caption").to_pylist() == ["café crème – “quoted”"]
    assert table.column("caption_bad_encoding").to_pylist() == [False]


def test_a_byte_the_named_encoding_lacks_is_an_error_with_its_offset(tmp_path):
    path = tmp_path / "odd.csv"
    data = b"url,caption\nhttp://x.org/1.jpg,undefined \x81 in cp1252\n"
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"odd.csv is not cp1252: byte 0x81 at offset {data.index(0x81)} "):
        _read(path, "csv", encoding="cp1252")


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8"])
def test_a_byte_order_mark_says_the_encoding(tmp_path, codec):
    text = "url,caption\nhttp://x.org/東京.jpg,一只红色的自行车\nhttp://x.org/2.jpg,NA\n"
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + text).encode(codec))
    table = _read(path, "csv")
    assert table.column("url").to_pylist() == ["http://x.org/東京.jpg", "http://x.org/2.jpg"]
    assert table.column("caption").to_pylist() == ["一只红色的自行车", "NA"]


def test_utf16_jsonl_and_tsv_by_their_mark(tmp_path):
    (tmp_path / "a.jsonl").write_bytes('\ufeff{"url": "U", "caption": "東京の夜景"}\n'.encode("utf-16-le"))
    assert _read(tmp_path / "a.jsonl").column("caption").to_pylist() == ["東京の夜景"]
    (tmp_path / "b.tsv.gz").write_bytes(_compress('\ufeffurl\tcaption\nU\t"東京"\n'.encode("utf-16-be"), ".gz"))
    assert _read(tmp_path / "b.tsv.gz").column("caption").to_pylist() == ['"東京"']


def test_shift_jis_csv_is_named(tmp_path):
    path = tmp_path / "sjis.csv"
    path.write_bytes("url,caption\nhttp://x.org/1.jpg,東京の夜景の写真です\n".encode("shift_jis"))
    with pytest.raises(InputError, match=r"is not utf-8: byte 0x93 at offset 31 \(line 2\).*looks like (cp932|shift_jis)"):
        _read(path, "csv")


def test_jsonl_that_is_not_utf8_names_the_offset(tmp_path):
    path = tmp_path / "latin.jsonl"
    data = '{"url": "U", "caption": "café"}\n'.encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"latin.jsonl is not utf-8: byte 0xE9 at offset {data.index(0xE9)} \(line 1\)"):
        _read(path, "jsonl")


def test_a_url_cell_that_is_not_utf8_is_never_fetched(tmp_path):
    from curate.download.browser_url import browser_url

    path = tmp_path / "urls.csv"
    path.write_bytes(b"url,caption\nhttp://x.org/caf\xe9.jpg,one caption\nhttp://x.org/ok.jpg,na\xc3\xafve caption\n")
    urls = _read(path, "csv").column("url").to_pylist()
    assert urls == ["http://x.org/caf\ufffd.jpg", "http://x.org/ok.jpg"]
    assert [browser_url(u) for u in urls] == [None, "http://x.org/ok.jpg"]  # None: url_invalid


# -- Parquet string columns holding invalid UTF-8 (some writers produce them) -------------


def _parquet_with_invalid_utf8(path) -> None:
    captions = pa.array([b"fine caption", b"caf\xe9 au lait", None, b"\xff\xfe"], pa.binary()).view(pa.string())
    urls = pa.array([b"http://x.org/1.jpg", b"http://x.org/caf\xe9.jpg", b"http://x.org/3.jpg", b"http://x.org/4.jpg"],
                    pa.binary()).view(pa.string())
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)


def test_parquet_string_column_with_invalid_utf8_flags_rows(tmp_path):
    _parquet_with_invalid_utf8(tmp_path / "in.parquet")
    table = _read(tmp_path / "in.parquet", "parquet")
    assert table.column("caption").to_pylist() == ["fine caption", "caf\ufffd au lait", None, "\ufffd\ufffd"]
    assert table.column("caption_bad_encoding").to_pylist() == [False, True, False, True]
    assert table.column("url").to_pylist()[1] == "http://x.org/caf\ufffd.jpg"
    table.validate(full=True)  # every value is valid UTF-8 from here on


def test_large_string_parquet_column_with_invalid_utf8(tmp_path):
    captions = pa.array([b"ok", b"\xe9"], pa.large_binary()).view(pa.large_string())
    pq.write_table(pa.table({"url": ["U0", "U1"], "caption": captions}), tmp_path / "in.parquet")
    table = _read(tmp_path / "in.parquet", "parquet")
    assert table.column("caption").to_pylist() == ["ok", "\ufffd"]
    assert table.column("caption_bad_encoding").to_pylist() == [False, True]


# -- every string-like Arrow type through the same validation (issue 31, item 4) ---------------

_BAD = [b"fine caption", b"caf\xe9 au lait", None, b"\xff\xfe", b"fine caption"]


def _string_like(kind: str) -> pa.Array:
    """``_BAD`` as a column of ``kind``, its bytes unchecked (as a writer that breaks UTF-8 leaves them)."""
    plain = pa.array(_BAD, pa.binary()).view(pa.string())
    large = pa.array(_BAD, pa.large_binary()).view(pa.large_string())
    if kind == "string_view":
        return pa.array(_BAD, pa.binary_view()).view(pa.string_view())
    if kind == "dictionary":  # pandas' category dtype, as pyarrow writes it
        return pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 0], pa.int32()),
                                              pa.array([b"fine caption", b"caf\xe9 au lait", b"\xff\xfe"]).view(pa.string()))
    if kind == "dictionary of large_string":  # pyarrow refused its dictionary page when read dense
        return pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 0], pa.int8()),
                                              pa.array([b"fine caption", b"caf\xe9 au lait", b"\xff\xfe"],
                                                       pa.large_binary()).view(pa.large_string()))
    return {"string": plain, "large_string": large}[kind]


@pytest.mark.parametrize("kind", ["string", "large_string", "string_view", "dictionary",
                                  "dictionary of large_string"])
def test_every_string_like_parquet_column_gets_the_same_utf8_validation(tmp_path, kind):
    captions = _string_like(kind)
    urls = pa.array([f"http://x.org/{i}.jpg" for i in range(5)])
    pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "in.parquet")
    stored = pq.read_schema(tmp_path / "in.parquet").field("caption").type
    assert str(stored).startswith(kind.split()[0])  # read back in its own layout, not as plain string
    table = _read(tmp_path / "in.parquet", "parquet")
    assert table.column("caption").to_pylist() == ["fine caption", "caf\ufffd au lait", None, "\ufffd\ufffd",
                                                   "fine caption"]
    assert table.column("caption_bad_encoding").to_pylist() == [False, True, False, True, False]
    table.validate(full=True)


def test_a_pandas_category_column_with_invalid_utf8_is_read(tmp_path):
    """The attack's file: pandas' category dtype, written by pyarrow, one broken cell."""
    import pandas as pd

    frame = pd.DataFrame({"url": ["http://x.org/1.jpg", "http://x.org/2.jpg"],
                          "caption": pd.Categorical(["a red bicycle", "a blue car"], categories=["a red bicycle", "a blue car"])})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    caption = table.column("caption").chunk(0)
    broken = pa.DictionaryArray.from_arrays(caption.indices, pa.array([b"a red bicycle", b"a blue \xe9car"]).view(pa.string()))
    pq.write_table(table.set_column(1, "caption", broken), tmp_path / "in.parquet")
    out = _read(tmp_path / "in.parquet", "parquet")
    assert out.column("caption_bad_encoding").to_pylist() == [False, True]
    assert out.column("url").to_pylist() == ["http://x.org/1.jpg", "http://x.org/2.jpg"]
