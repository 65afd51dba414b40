"""Read the input (file, glob or folder; local or bucket) into rows with stable sample_ids.

A sample_id is ``FFFFF-RRRRRRRRRR``: the input file's position in the sorted file list and
the row's position in that file. It is stable across re-runs of the same input, sorts in
input order, and names where a row came from.

Reading goes through pyarrow's own readers, on the file decompressed (``.gz``, ``.bz2``,
``.zst``) and, for text, transcoded to UTF-8 (``curate.core.input_decoding``). CSV and
TSV cells are text as written: only empty cells are missing (not ``NA``, ``null``,
``NaN``: those are captions too), and TSV has no quoting (a ``"`` is a character).

The URL and caption columns are read as bytes and decoded here. A cell that is not valid
UTF-8 is decoded with replacement and recorded (``caption_bad_encoding``; a URL becomes
``url_invalid`` at the precheck), so a few broken cells never stop a run. A text file
whose cells are never UTF-8 where they are not ASCII is in another encoding: it stops the
run with where and what it looks like (``input.encoding`` reads it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curate.core import storage
from curate.core.config import CurateConfig, InputConfig
from curate.core.suggest import did_you_mean
from curate.core.input_decoding import (
    Undecodable, first_invalid_utf8, is_utf8, not_utf8_message, open_input, split_compression,
)
from curate.schemas.columns import ROWS as ROWS_SCHEMA

EXTENSIONS = {"parquet": (".parquet",), "csv": (".csv",), "tsv": (".tsv",), "jsonl": (".jsonl", ".json")}



class InputError(ValueError):
    """The input cannot be read; raised before anything is written."""


@dataclass(frozen=True)
class InputFile:
    index: int
    uri: str
    size: int


def sample_id(file_index: int, row: int) -> str:
    return f"{file_index:05d}-{row:010d}"


@dataclass(frozen=True)
class InputPart:
    """The slice of one input file that one prepare task reads: the whole file, or (an
    uncompressed Parquet file larger than a part) a run of its row groups starting at row
    ``first_row``. ``name`` (``FFFFF-SSSS``) names the part's files in the run directory."""

    item: InputFile
    split: int = 0
    row_groups: tuple[int, ...] | None = None
    first_row: int = 0

    @property
    def name(self) -> str:
        return f"{self.item.index:05d}-{self.split:04d}"


def plan_input_parts(files: list[InputFile], cfg: InputConfig, rows_per_part: int) -> list[InputPart]:
    """One part per input file, except uncompressed Parquet files of more than
    ``rows_per_part`` rows: those are cut at row-group boundaries into parts of about that
    many rows (read from each file's footer only). CSV and JSON lines have no such
    boundaries: a large one is one part (split the input into several files)."""
    parts = []
    for item in files:
        if cfg.format != "parquet" or split_compression(item.uri)[1]:
            parts.append(InputPart(item))
            continue
        fs, path = storage.fs_and_path(item.uri)
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"input file {item.uri} is not valid parquet: {error}") from None
        splits, groups, rows, first = [], [], 0, 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= rows_per_part:
                splits.append((tuple(groups), first))
                groups, first, rows = [], first + rows, 0
        if groups:
            splits.append((tuple(groups), first))
        if len(splits) <= 1:
            parts.append(InputPart(item))
        else:
            parts.extend(InputPart(item, k, groups, first) for k, (groups, first) in enumerate(splits))
    return parts


def resolve_input_files(cfg: InputConfig) -> list[InputFile]:
    fs, path = storage.fs_and_path(cfg.path)
    extensions = EXTENSIONS[cfg.format]
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if split_compression(p.lower())[0].endswith(extensions)]
    elif fs.exists(path):
        paths = [path]
    else:
        raise InputError(f"input.path: {cfg.path!r} does not exist")
    paths = sorted(p for p in paths if not fs.isdir(p))
    if not paths:
        raise InputError(f"input.path: no {cfg.format} files ({', '.join(extensions)}) found at {cfg.path!r}")
    return [InputFile(i, storage.to_uri(fs, p), int(fs.size(p) or 0)) for i, p in enumerate(paths)]


def _csv_options(cfg: InputConfig) -> tuple[pa_csv.ParseOptions, pa_csv.ConvertOptions]:
    tsv = cfg.format == "tsv"
    # TSV (IANA text/tab-separated-values) has no quoting: a cell is the text between
    # tabs. pyarrow would honour '"' and merge lines into one cell up to the next quote.
    parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False) if tsv else pa_csv.ParseOptions(newlines_in_values=True)
    convert = pa_csv.ConvertOptions(
        column_types={cfg.url_col: pa.binary(), cfg.caption_col: pa.binary()},
        # the others are never decoded, unless input.keep_columns carries them (all: [], every column)
        include_columns=[] if cfg.keep_columns == "all" else [cfg.url_col, cfg.caption_col, *cfg.keep_columns],
        null_values=[""],  # not pyarrow's NA, N/A, NaN, null, ...: captions can say those
        strings_can_be_null=True,
    )
    return parse, convert


def read_raw(uri: str, cfg: InputConfig, row_groups: tuple[int, ...] | None = None) -> pa.Table:
    """The rows of one input file as pyarrow reads them (CSV/TSV: the URL and caption
    columns only, as binary); ``row_groups``: only those of a Parquet file. Raises
    Undecodable for text not valid in ``input.encoding``, pyarrow's errors for a file that
    is not its format."""
    text = cfg.format != "parquet"
    with open_input(uri, cfg.encoding if text else None) as handle:
        if cfg.format == "parquet":
            # Parquet needs random access: a compressed file is read into memory first.
            source = pa.BufferReader(handle.read()) if split_compression(uri)[1] else handle
            # The text columns are read as dictionaries: pyarrow then hands their bytes over
            # unchecked (read dense, a dictionary page of invalid UTF-8 fails the whole file:
            # "Invalid UTF8 payload"), and _decode validates every value, as for any column.
            names = set(pq.ParquetFile(source).schema_arrow.names)
            parquet = pq.ParquetFile(source, read_dictionary=[c for c in (cfg.url_col, cfg.caption_col) if c in names])
            return parquet.read() if row_groups is None else parquet.read_row_groups(row_groups)
        if cfg.format in ("csv", "tsv"):
            parse, convert = _csv_options(cfg)
            return pa_csv.read_csv(handle, parse_options=parse, convert_options=convert)
        table = pa_json.read_json(handle)
    # pyarrow's JSON reader can build list columns whose offsets overrun their values when a
    # list starts with null (apache/arrow#51305, open in 26.0.1): refuse them, never read garbage.
    table.validate(full=True)
    return table


def _header(uri: str, cfg: InputConfig) -> list[str]:
    """The column names on a CSV/TSV file's first line (for error messages)."""
    import csv

    with open_input(uri, cfg.encoding) as handle:
        line = handle.readline(1 << 20).decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    if cfg.format == "tsv":
        return line.split("\t")
    return next(csv.reader([line]), [])


def _plain_text_type(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    """Every string-like Arrow layout as a plain one, validated the same way: a dictionary
    column (pandas' category dtype) is its dictionary decoded (``_decode``) and taken by its
    indices; ``string_view``/``binary_view`` become (large) binary, whose bytes ``_decode``
    checks. Returns the column and, for a dictionary, the per-row flags (else None)."""
    if pa.types.is_dictionary(column.type):
        chunks, flags = [], []
        for chunk in column.chunks:
            values, bad = _decode(pa.chunked_array([chunk.dictionary]))
            indices = chunk.indices
            chunks.append(values.take(indices))
            picked = np.zeros(len(chunk), dtype=bool)
            valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
            picked[valid] = bad[indices.drop_null().to_numpy(zero_copy_only=False)]
            flags.append(picked)
        return (pa.chunked_array(chunks, pa.string()),
                np.concatenate(flags) if flags else np.zeros(0, dtype=bool))
    if pa.types.is_string_view(column.type) or pa.types.is_binary_view(column.type):
        # A view column's bytes are never checked as UTF-8 on read: read them as binary.
        raw = [chunk.view(pa.binary_view()) if pa.types.is_string_view(chunk.type) else chunk for chunk in column.chunks]
        return pa.chunked_array([chunk.cast(pa.large_binary()) for chunk in raw], pa.large_binary()), None
    return column, None


def _decode(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Text column -> (utf-8 strings, per-row 'was not valid UTF-8' flags). Every
    string-like type (string, large_string, string_view, dictionary of any of them, binary)
    goes through the same UTF-8 validation."""
    column, flags = _plain_text_type(column)
    if flags is not None:
        return column.combine_chunks(), flags
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        array = column.combine_chunks()
        try:
            array.validate(full=True)  # Parquet readers don't check UTF-8 (some writers break it)
            return array.cast(pa.string()), np.zeros(len(array), dtype=bool)
        except pa.ArrowInvalid:
            column = pa.chunked_array([array.view(pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary())])
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) or pa.types.is_fixed_size_binary(column.type):
        values, flags = [], np.zeros(len(column), dtype=bool)
        for i, raw in enumerate(column.to_pylist()):
            if raw is None:
                values.append(None)
                continue
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(raw.decode("utf-8", errors="replace"))
                flags[i] = True
        return pa.array(values, pa.string()), flags
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.string()), np.zeros(len(column), dtype=bool)
    # Numbers or nested values in a caption column: keep their text form, don't crash. A float
    # NaN is a missing cell (pandas writes an empty text column as float NaN): no text at all,
    # so the caption rules find it empty (caption_empty), never the word "NaN".
    values = [None if v is None or (isinstance(v, float) and math.isnan(v))
              else (v if isinstance(v, str) else json.dumps(v, default=str)) for v in column.to_pylist()]
    return pa.array(values, pa.string()), np.zeros(len(column), dtype=bool)


def _utf8_beyond_ascii(values: pa.Array, bad: np.ndarray) -> bool:
    """Whether some cell holds valid UTF-8 that is not plain ASCII."""
    ascii_only = pc.fill_null(pc.string_is_ascii(values), True).to_numpy(zero_copy_only=False)
    return bool(np.any(~ascii_only & ~bad))


def _not_utf8(item: InputFile, cfg: InputConfig) -> InputError | None:
    where = first_invalid_utf8(item.uri)
    if where is None:
        return None
    return InputError(not_utf8_message(item.uri, "utf-8", where.offset, where.bad, where.line, where.sample))


def _read(item: InputFile, cfg: InputConfig, row_groups: tuple[int, ...] | None = None) -> pa.Table:
    try:
        return read_raw(item.uri, cfg, row_groups)
    except Undecodable as where:
        with open_input(item.uri) as handle:
            sample = handle.read(64 * 1024)
        raise InputError(not_utf8_message(item.uri, where.encoding, where.offset, where.bad, sample=sample)) from None
    except pa.ArrowKeyError:  # include_columns: a column is not in the file
        columns = _header(item.uri, cfg)
        missing = [(k, c) for k, c in _named_columns(cfg) if c not in columns]
        role, col = missing[0] if missing else ("input.url_col", cfg.url_col)
        raise InputError(f"{role}: column {col!r} not found in {item.uri}{did_you_mean(col, columns)}; "
                         f"its columns are {columns}") from None
    except (pa.ArrowInvalid, OSError, ValueError) as error:
        # JSON must be UTF-8 throughout: a byte that is not makes pyarrow's reader fail.
        problem = _not_utf8(item, cfg) if cfg.format == "jsonl" and is_utf8(cfg.encoding) else None
        raise (problem or InputError(f"input file {item.uri} is not valid {cfg.format}: {error}")) from None


def read_input_file(item: InputFile, cfg: InputConfig) -> pa.Table:
    """One whole input file -> ROWS_SCHEMA rows (see read_input_part)."""
    return read_input_part(InputPart(item), cfg)


def read_input_part(part: InputPart, cfg: InputConfig, reserved: frozenset[str] = frozenset()) -> pa.Table:
    """One input part -> ROWS_SCHEMA rows, sample_ids numbered from the part's first row,
    then the columns ``input.keep_columns`` carries (kept_columns; ``reserved``: the names
    they may not have).
    Raises InputError (what and where) for a file that can't be read as ``cfg.format`` in
    ``cfg.encoding``, or lacks a column."""
    item = part.item
    raw = _read(item, cfg, part.row_groups)
    for role, col in _named_columns(cfg):
        if col not in raw.column_names:
            raise InputError(
                f"{role}: column {col!r} not found in {item.uri}{did_you_mean(col, raw.column_names)}; "
                f"its columns are {raw.column_names}"
            )
    urls, bad_urls = _decode(raw.column(cfg.url_col))
    captions, bad = _decode(raw.column(cfg.caption_col))
    if (cfg.format != "parquet" and (bad.any() or bad_urls.any())
            and not (_utf8_beyond_ascii(urls, bad_urls) or _utf8_beyond_ascii(captions, bad))):
        # Not one cell is UTF-8 beyond ASCII, and some are not UTF-8: the file is in
        # another encoding (Excel's cp1252...), not UTF-8 with a few broken cells.
        problem = _not_utf8(item, cfg)
        if problem is not None:
            raise problem
    n = raw.num_rows
    rows = pa.table(
        {
            "sample_id": pa.array([sample_id(item.index, part.first_row + r) for r in range(n)], pa.string()),
            "input_file": pa.array([item.uri] * n, pa.string()),
            "input_row": pa.array(np.arange(part.first_row, part.first_row + n, dtype=np.int64)),
            "url": pc.utf8_trim_whitespace(urls),
            "caption": captions,
            "caption_bad_encoding": pa.array(bad),
        },
        schema=ROWS_SCHEMA,
    )
    for name, column in kept_columns(raw, cfg, reserved).items():
        rows = rows.append_column(name, column)
    return rows


def _named_columns(cfg: InputConfig) -> list[tuple[str, str]]:
    """(config key, column) of every input column the config names."""
    kept = [] if cfg.keep_columns == "all" else [("input.keep_columns", c) for c in cfg.keep_columns]
    return [("input.url_col", cfg.url_col), ("input.caption_col", cfg.caption_col), *kept]


# The prefix of an input column that `input.keep_columns: all` carries and whose name one of
# curate's own columns has (LAION's WIDTH, DataComp's uid): ``input_WIDTH``.
KEPT_PREFIX = "input_"


def kept_columns(raw: pa.Table, cfg: InputConfig, reserved: frozenset[str] = frozenset()) -> dict[str, pa.ChunkedArray]:
    """The input columns ``input.keep_columns`` carries, by the name they get in the run:
    their own, or (``all``) ``input_<name>`` where ``reserved`` (lower-case names of curate's
    columns; DuckDB compares names without case) has it. The URL and caption columns are
    curate's ``url`` and ``caption`` already."""
    if cfg.keep_columns != "all":
        return {name: raw.column(name) for name in cfg.keep_columns}
    out = {}
    for name in raw.column_names:
        if name in (cfg.url_col, cfg.caption_col):
            continue
        out[f"{KEPT_PREFIX}{name}" if name.lower() in reserved else name] = raw.column(name)
    return out


def fingerprint(files: list[InputFile], cfg: CurateConfig) -> dict:
    """What a resumed run must share with the run it resumes."""
    return {"files": [[f.uri, f.size] for f in files], "input": cfg.input.model_dump(mode="json")}
