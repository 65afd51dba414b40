"""Which input files a run reads, and how a resume knows they are still the same.

- A run directory is never input: with ``--out`` inside the input folder, the run's own
  Parquet files (rows/, manifest/, ...) would be listed as input on the next run, and the
  run could never resume. They are left out of the listing before the files are numbered,
  so a first run (no run directory yet) and its resumes number the input alike. So are
  the files of any other curate run directory found in the input folder (a folder with
  a ``state.json`` above a ``rows/``, ``manifest/``, ... folder).
- A resume must read the same bytes the run started from. File sizes alone miss an edit
  that keeps the size (another URL or caption of the same length), so each file is also
  identified by its content: a sha256 of a local file, the ETag (else modification time)
  of an object in a bucket, where reading every input back would cost a full download.
"""

from __future__ import annotations

import os

from curate.core import commits, storage
from curate.core.config import CurateConfig, InputConfig
from curate.core.inputs import InputError, InputFile, fingerprint, resolve_input_files


def _within(uri: str, root: str) -> bool:
    """``uri`` is ``root`` or below it (local paths compared as real paths)."""
    if storage.is_remote(uri) != storage.is_remote(root):
        return False
    if storage.is_remote(uri):
        uri, root = uri.rstrip("/"), root.rstrip("/")
    else:
        uri, root = os.path.realpath(uri), os.path.realpath(root)
    return uri == root or uri.startswith(root + "/")


# Folders of a run directory that hold Parquet files (docs/run-directory.md).
_RUN_FOLDERS = {"rows", "download_list", "documents", "downloaded", "scored", "manifest", "manifest_images",
                "output", "dedupe_index"}
# The keys of a curate run's RUN/state.json (run_inputs.input_state).
_STATE_KEYS = {"files", "input"}


def is_curate_run(root: str) -> bool:
    """Whether ``root`` is a curate run directory, known by its own files: ``config.yaml``
    and a ``state.json`` holding curate's keys (``files``, ``input``). A folder that merely
    has a ``state.json`` and an ``output/`` (a crawler's own layout) is not one."""
    import json

    if not (storage.exists(storage.join(root, "config.yaml")) and storage.exists(storage.join(root, "state.json"))):
        return False
    try:
        state = json.loads(storage.read_text(storage.join(root, "state.json")))
    except (ValueError, OSError):
        return False
    return isinstance(state, dict) and _STATE_KEYS <= state.keys() and isinstance(state["files"], list)


def _other_run_roots(uris: list[str]) -> set[str]:
    """Curate run directories among the parents of ``uris``: ``X`` when a file is in ``X/<run
    folder>/`` and ``X`` is a curate run (``is_curate_run``)."""
    candidates = {u.rsplit("/", 2)[0] for u in uris if u.count("/") >= 2 and u.rsplit("/", 2)[1] in _RUN_FOLDERS}
    return {root for root in candidates if is_curate_run(root)}


def list_run_inputs(cfg: InputConfig, run_root: str, left_out: dict[str, list[str]] | None = None) -> list[InputFile]:
    """``resolve_input_files`` without the files inside ``run_root`` or another curate run
    directory, numbered after they are left out; ``left_out`` (when given) gets each such
    directory's files, for the run to name them. Raises InputError when ``input.path`` is
    itself inside the run directory or nothing but run files is there."""
    base = cfg.path.split("*", 1)[0].split("?", 1)[0] or "."  # a glob's folder
    if _within(base, run_root) and not _within(run_root, base):  # strictly inside
        raise InputError(f"input.path: {cfg.path!r} is inside the run directory {run_root!r}; "
                         "a run never reads its own files: use another --out")
    listed = resolve_input_files(cfg)
    runs = [run_root, *sorted(_other_run_roots([f.uri for f in listed]))]
    files = []
    for f in listed:
        root = next((r for r in runs if _within(f.uri, r)), None)
        if root is None:
            files.append(f)
        elif left_out is not None:
            left_out.setdefault(root, []).append(f.uri)
    if not files:
        raise InputError(f"input.path: no {cfg.format} files found at {cfg.path!r} besides run directories "
                         f"({', '.join(sorted(set(runs)))})")
    return [InputFile(index, f.uri, f.size) for index, f in enumerate(files)]


def validate_new_inputs(files: list[InputFile], cfg: CurateConfig) -> None:
    """Read every part of ``files`` as the prepare step will (the run's kind, its format and
    encoding) and drop the rows: InputError (what and where) for one that can't be read.
    ``curate run --extend`` calls it before it changes anything in the run directory."""
    from curate.core.inputs import plan_input_parts, read_input_part

    for part in plan_input_parts(files, cfg.input, cfg.manifest.partition_rows):
        if cfg.input.kind == "documents":
            from curate.flow.documents_input import read_documents_part

            read_documents_part(part, cfg.input)
        else:
            read_input_part(part, cfg.input)


def content_id(uri: str) -> str:
    """What identifies a file's content: ``sha256:<hex>`` of a local file (read once),
    ``etag:<etag>`` or ``mtime:<time>`` of an object in a bucket."""
    if not storage.is_remote(uri):
        return "sha256:" + commits.describe(uri)["sha256"]
    fs, path = storage.fs_and_path(uri)
    info = fs.info(path)
    for key in ("ETag", "etag", "md5Hash", "md5_hash"):
        if info.get(key):
            return f"etag:{str(info[key]).strip(chr(34))}"
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        if info.get(key):
            return f"mtime:{info[key]}"
    raise InputError(f"input file {uri}: its store gives neither an ETag nor a modification time, "
                     "so a resume could not tell whether it changed")


def input_state(files: list[InputFile], cfg: CurateConfig) -> dict:
    """What a resumed run must share with the run it resumes (``RUN/state.json``):
    ``inputs.fingerprint`` (names, sizes, input config) plus each file's ``content_id``."""
    return {**fingerprint(files, cfg), "content": [[f.uri, content_id(f.uri)] for f in files]}


def input_changes(stored: dict, current: dict, ignore_path: bool = False) -> list[str]:
    """How ``current`` differs from a stored state, one line per difference (``<uri>:
    added``, ``removed``, ``size changed`` or ``content changed``; ``input settings
    changed``); empty if the input is the same. ``ignore_path``: input.path may differ
    (``curate run --extend``). A state stored by an earlier curate has no ``content``: only
    what it has is compared."""
    settings = [dict(s.get("input") or {}) for s in (stored, current)]
    for s in settings:
        if ignore_path:
            s.pop("path", None)
        elif isinstance(s.get("path"), str):
            s["path"] = storage.normalized_path(s["path"])
    changes = ["input settings changed"] if settings[0] != settings[1] else []
    before, after = {u: s for u, s in stored.get("files", [])}, {u: s for u, s in current.get("files", [])}
    changes += [f"{u}: {'added' if u not in before else 'removed' if u not in after else 'size changed'}"
                for u in sorted(before.keys() | after.keys()) if before.get(u) != after.get(u)]
    if "content" in stored:
        recorded = dict(map(tuple, stored["content"]))
        changes += [f"{u}: content changed" for u, c in current["content"]
                    if u in recorded and before.get(u) == after.get(u) and recorded[u] != c]
    return changes
