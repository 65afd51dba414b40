"""The run directory: the contract with users (see docs/run-directory.md)."""

from __future__ import annotations

from dataclasses import dataclass

from curate.core import storage


@dataclass(frozen=True)
class RunDir:
    root: str

    def _sub(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self._sub("config.yaml")

    @property
    def state(self) -> str:
        return self._sub("state.json")

    @property
    def rows(self) -> str:
        """Every input row with its sample_id and pre-download check, one part per input file."""
        return self._sub("rows")

    @property
    def documents(self) -> str:
        """Documents runs: every input document, normalised (its rows/ are its images)."""
        return self._sub("documents")

    @property
    def manifest_images(self) -> str:
        """Documents runs: one row per image of every document, with status and reason."""
        return self._sub("manifest_images")

    @property
    def download_list(self) -> str:
        """Rows that passed the pre-download check, in parts of download.shard_size rows."""
        return self._sub("download_list")

    @property
    def downloaded(self) -> str:
        return self._sub("downloaded")

    @property
    def retries(self) -> str:
        """`curate retry`: each pass's list of rows to download again (retry/NN/download_list/)."""
        return self._sub("retry")

    @property
    def scored(self) -> str:
        return self._sub("scored")

    @property
    def manifest(self) -> str:
        return self._sub("manifest")

    @property
    def output(self) -> str:
        return self._sub("output")

    @property
    def report(self) -> str:
        return self._sub("report")

    @property
    def summary(self) -> str:
        return self._sub("summary.json")

    @property
    def progress_counts(self) -> str:
        """Counter files of the model stages' actors, summed into progress.json per stage."""
        return self._sub("_progress")

    @property
    def extending(self) -> str:
        """Present while a ``curate run --extend`` is unfinished: the input files it adds."""
        return self._sub("_extending.json")

    def marker(self, step: str) -> str:
        """A step's done-marker; written last, so its presence means the step finished."""
        return self._sub("_done", step)
