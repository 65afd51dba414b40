"""How long img2dataset's reader pauses between its retries of writing the shard lists.

Before any fetch, img2dataset's reader (``img2dataset.reader.Reader._save_to_arrow``, run in
the driver) writes each download shard's rows to ``RUN/downloaded/_tmp/<shard>.feather``.
A failed write is retried 10 times with 1 s pauses, and that whole round 10 times with
pauses of 2 x round seconds: when the disk is full (or the bucket refuses writes) at the
start of the download, about 3 minutes pass before the error reaches curate and the run
stops (docs/reliability.md). img2dataset has no option for these pauses (1.47.0), so while
a download runs its reader's ``time.sleep`` is scaled by ``download.write_retry_pause``:
1 keeps img2dataset's own pauses, 0 retries at once (the same attempts, the same error).
"""

from __future__ import annotations

import contextlib
import importlib
import time


class _ScaledPauses:
    """Stands in for the ``time`` module inside img2dataset's reader: ``sleep`` pauses
    ``factor`` times as long; everything else is the real module's."""

    def __init__(self, factor: float):
        self.factor = factor

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds * self.factor)

    def __getattr__(self, name: str):
        return getattr(time, name)


@contextlib.contextmanager
def reader_write_pauses(factor: float):
    """While active, img2dataset's reader pauses ``factor`` times its own pauses between
    retries of a failed shard-list write (``factor`` >= 0; 1: unchanged)."""
    reader = importlib.import_module("img2dataset.reader")
    original = reader.time
    reader.time = original if factor == 1 else _ScaledPauses(factor)
    try:
        yield
    finally:
        reader.time = original
