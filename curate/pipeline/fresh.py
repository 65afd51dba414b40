"""``curate run --fresh``: start a run directory again from nothing, safely.

A run directory can be resumed only with the config and input it started with; a changed
setting that decides which rows are fetched (``download.allow_private_hosts``) needs a new
run. ``--fresh`` removes the old run's entries first, and only when the directory is a curate
run: it holds a ``config.yaml`` that is a curate config and the run's own records
(``state.json``, ``_done/``). Only what curate writes goes: other files the user keeps in the
folder stay, and the run lock (held while this runs) keeps a second run out.
"""

from __future__ import annotations

import yaml

from curate.core import storage
from curate.core.config import ConfigError
from curate.core.rundir import RunDir

# Every entry curate writes at the top of a run directory (docs/run-directory.md).
RUN_ENTRIES = ("config.yaml", "state.json", "summary.json", "progress.json", "rows", "documents", "download_list",
               "downloaded", "retry", "scored", "manifest", "manifest_images", "output", "report", "eval",
               "_done", "_commits", "_progress", "_same_url", "_decide")


def is_curate_run(root: str) -> bool:
    """Whether ``root`` holds a curate run: a config.yaml with curate's input and output
    sections, and the run's state or step markers."""
    run = RunDir(root)
    if not storage.exists(run.config):
        return False
    try:
        config = yaml.safe_load(storage.read_text(run.config))
    except yaml.YAMLError:
        return False
    return (isinstance(config, dict) and {"input", "output"} <= config.keys()
            and (storage.exists(run.state) or storage.exists(storage.join(root, "_done"))))


def remove_run(root: str) -> list[str]:
    """Remove the curate run at ``root`` (its entries only; the folder and other files stay).
    Returns the entries removed; none when nothing of a run is there. ConfigError when
    ``root`` has a config.yaml that is not a curate run's: nothing is removed then."""
    run = RunDir(root)
    if not storage.exists(run.config):
        return []
    if not is_curate_run(root):
        raise ConfigError(f"--fresh: {run.config} is not a curate run's config (no input/output sections or no "
                          "run records next to it): nothing was removed; choose another --out")
    removed = []
    for name in RUN_ENTRIES:
        entry = storage.join(root, name)
        if storage.exists(entry):
            storage.remove_tree(entry)
            removed.append(name)
    return removed
