"""One real finished run for the report, query and progress tests (session-scoped: built once).

The demo's noisy corpus (true and wrong captions, junk alt-text, exact and near
duplicates, broken URLs, corrupt files) served from 127.0.0.1, run with the demo config:
the shipped tiny CLIP, clip.min_score, near-dedupe, and the report written at the end.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curate.demo import demo_config
from curate.pipeline.runner import run_pipeline
from curate.synth.corpus import make_corpus
from curate.synth.http_server import CorpusServer

ROWS, SEED = 120, 3


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("finished")
    corpus = make_corpus(ROWS, SEED)
    with CorpusServer(corpus.routes) as server:
        pq.write_table(corpus.input_table(server.base_url), out / "input.parquet")
        cfg = demo_config(out, out / "run", ["download.timeout=2"])
        run_pipeline(cfg, Console(record=True, width=120))
    return out / "run"


DOCUMENTS, DOCUMENTS_SEED = 40, 3


@pytest.fixture(scope="session")
def finished_documents_run(tmp_path_factory, ray_session):
    """A documents run of the interleaved demo's corpus (pages with described images,
    distractors, reused images, broken links, banners and galleries) with the demo's config:
    the tiny CLIP, ITM and captioner, synthetic captions for unmatched images, the document
    rules; the report written at the end."""
    from curate.demo_documents import documents_demo_config
    from curate.synth.documents import make_documents

    out = tmp_path_factory.mktemp("finished-documents")
    corpus = make_documents(DOCUMENTS, DOCUMENTS_SEED)
    with CorpusServer(corpus.routes) as server:
        pq.write_table(corpus.input_table(server.base_url), out / "documents.parquet")
        cfg = documents_demo_config(out / "documents.parquet", out / "run", ["download.timeout=2"])
        run_pipeline(cfg, Console(record=True, width=120))
    return out / "run"
