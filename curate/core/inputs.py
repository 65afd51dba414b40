"""Read the input (file, glob or folder; local or bucket) into rows with stable sample_ids.

A sample_id is ``FFFFF-RRRRRRRRRR``: the input file's position in the sorted file list and
the row's position in that file. It is stable across re-runs of the same input, sorts in
input order, and names where a row came from.

Reading goes through pyarrow's own readers. The URL and caption columns are read as
bytes and decoded here with replacement, so a caption that is not valid UTF-8 becomes a
recorded reason (``caption_bad_encoding``) instead of a reader crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curate.core import storage
from curate.core.config import CurateConfig, InputConfig
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


def resolve_input_files(cfg: InputConfig) -> list[InputFile]:
    fs, path = storage.fs_and_path(cfg.path)
    extensions = EXTENSIONS[cfg.format]
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if p.lower().endswith(extensions)]
    elif fs.exists(path):
        paths = [path]
    else:
        raise InputError(f"input.path: {cfg.path!r} does not exist")
    paths = sorted(p for p in paths if not fs.isdir(p))
    if not paths:
        raise InputError(f"input.path: no {cfg.format} files ({', '.join(extensions)}) found at {cfg.path!r}")
    return [InputFile(i, storage.to_uri(fs, p), int(fs.size(p) or 0)) for i, p in enumerate(paths)]


def read_raw(uri: str, cfg: InputConfig) -> pa.Table:
    fs, path = storage.fs_and_path(uri)
    text_types = {cfg.url_col: pa.binary(), cfg.caption_col: pa.binary()}
    with fs.open(path, "rb") as handle:
        if cfg.format == "parquet":
            return pq.read_table(handle)
        if cfg.format in ("csv", "tsv"):
            return pa_csv.read_csv(
                handle,
                parse_options=pa_csv.ParseOptions(delimiter="\t" if cfg.format == "tsv" else ",", newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(column_types=text_types, strings_can_be_null=True),
            )
        table = pa_json.read_json(handle)
    # pyarrow's JSON reader can build list columns whose offsets overrun their values when a
    # list starts with null (apache/arrow#51305, open in 26.0.1): refuse them, never read garbage.
    table.validate(full=True)
    return table


def _decode(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Text column -> (utf-8 strings, per-row 'was not valid UTF-8' flags)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        array = column.combine_chunks().cast(pa.string())
        return array, np.zeros(len(array), dtype=bool)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
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
    # Numbers or nested values in a caption column: keep their text form, don't crash.
    values = [None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str)) for v in column.to_pylist()]
    return pa.array(values, pa.string()), np.zeros(len(column), dtype=bool)


def read_input_file(item: InputFile, cfg: InputConfig) -> pa.Table:
    try:
        raw = read_raw(item.uri, cfg)
    except (pa.ArrowInvalid, OSError, ValueError) as error:
        raise InputError(f"input file {item.uri} is not valid {cfg.format}: {error}") from None
    for role, col in (("input.url_col", cfg.url_col), ("input.caption_col", cfg.caption_col)):
        if col not in raw.column_names:
            raise InputError(
                f"{role}: column {col!r} not found in {item.uri}; its columns are {raw.column_names}"
            )
    urls, _ = _decode(raw.column(cfg.url_col))
    captions, bad = _decode(raw.column(cfg.caption_col))
    n = raw.num_rows
    return pa.table(
        {
            "sample_id": pa.array([sample_id(item.index, r) for r in range(n)], pa.string()),
            "input_file": pa.array([item.uri] * n, pa.string()),
            "input_row": pa.array(np.arange(n, dtype=np.int64)),
            "url": pc.utf8_trim_whitespace(urls),
            "caption": captions,
            "caption_bad_encoding": pa.array(bad),
        },
        schema=ROWS_SCHEMA,
    )


def fingerprint(files: list[InputFile], cfg: CurateConfig) -> dict:
    """What a resumed run must share with the run it resumes."""
    return {"files": [[f.uri, f.size] for f in files], "input": cfg.input.model_dump(mode="json")}
