"""The five statuses of the manifest: every input row ends with exactly one.

SQL anywhere in curate names a status through these constants (``Status.KEPT.sql``),
never as a string literal, so the vocabulary lives in one place.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    KEPT = "kept"
    DOWNLOAD_FAILED = "download_failed"
    FILTERED = "filtered"
    DUPLICATE = "duplicate"
    BLOCKED = "blocked"

    @property
    def sql(self) -> str:
        """The status as a SQL string literal, e.g. ``'kept'``."""
        return f"'{self.value}'"

    def __str__(self) -> str:
        return self.value


# The order the pipeline decides in, and the order reports list statuses.
STATUS_ORDER: tuple[Status, ...] = (
    Status.KEPT, Status.FILTERED, Status.DUPLICATE, Status.DOWNLOAD_FAILED, Status.BLOCKED,
)
