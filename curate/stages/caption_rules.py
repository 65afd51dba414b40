"""Caption rules stage: cheap rules on caption text, for the original and every synthetic caption.

Stores the facts of each caption (characters, words, junk kind; ``caption_text`` is the
original with its whitespace folded, as a training caption is written) and decides from
them with SQL rules over each candidate caption (``scope="caption"``). A junk alt-text only
rejects the original caption: with CapFilt on, a good image can still be kept with a
synthetic caption (curate.flow.pairs decides the sample).

Runs as a light Ray Data task after the captioner; no model. Documents runs have no
original caption: there it runs when the captioner does, and its rules judge the synthetic
captions an image no sentence describes may get (``interleaved.caption_unmatched``).
"""

from __future__ import annotations

import pyarrow as pa

from curate.schemas import reasons as R
from curate.stages.base import BatchStage, Rule
from curate.stages.cheap_filters import SPECIAL_TOKEN, caption_facts, fold_whitespace


class CaptionRulesStage(BatchStage):
    """Text facts of every candidate caption and the cheap caption rules over them (pairs; a
    documents run's synthetic captions)."""

    key = "caption_rules"
    section = "filters"
    reads = ("caption", "caption_bad_encoding")
    optional_reads = ("alternate_captions", "synthetic_captions")
    writes = pa.schema([
        ("caption_text", pa.string()),
        ("caption_chars", pa.int32()),
        ("caption_words", pa.int32()),
        ("caption_junk", pa.string()),
        ("synthetic_caption_chars", pa.list_(pa.int32())),
        ("synthetic_caption_words", pa.list_(pa.int32())),
        ("synthetic_caption_junk", pa.list_(pa.string())),
        # The alternates (the captions of the other rows with the same URL), as the original.
        ("alternate_caption_texts", pa.list_(pa.string())),
        ("alternate_caption_chars", pa.list_(pa.int32())),
        ("alternate_caption_words", pa.list_(pa.int32())),
        ("alternate_caption_junk", pa.list_(pa.string())),
    ])
    # filters.max_caption_chars is fixed for a run: longer captions' words are never counted.
    thresholds = ("filters.min_caption_words", "filters.max_caption_words", "filters.junk_captions")
    rows = "downloaded"
    # Per candidate caption: its column for the original, the list column of its synthetic
    # captions, and that of its alternates.
    caption_columns = {
        "chars": ("caption_chars", "synthetic_caption_chars", "alternate_caption_chars"),
        "words": ("caption_words", "synthetic_caption_words", "alternate_caption_words"),
        "junk": ("caption_junk", "synthetic_caption_junk", "alternate_caption_junk"),
        "bad_encoding": ("caption_bad_encoding", None, "alternate_caption_bad_encoding"),
    }

    def configured(self) -> bool:
        # A document image has no alt-text: the only captions to judge are synthetic ones.
        return self.cfg.input.kind == "pairs" or self.cfg.captioning

    def __call__(self, batch: pa.Table) -> pa.Table:
        limit, tokens = self.cfg.filters.max_caption_chars, tuple(self.cfg.filters.special_tokens)
        captions = batch.column("caption").to_pylist()
        lists = {source: (batch.column(f"{source}_captions").to_pylist() if f"{source}_captions" in batch.column_names
                          else [None] * batch.num_rows) for source in ("synthetic", "alternate")}
        out: dict[str, list] = {field.name: [None] * batch.num_rows for field in self.writes}
        for i in self.todo(batch):
            out["caption_text"][i] = fold_whitespace(captions[i] or "")
            out["caption_chars"][i], out["caption_words"][i], out["caption_junk"][i] = caption_facts(captions[i], limit, tokens)
            for source, texts in lists.items():
                if texts[i] is None:
                    continue
                facts = [caption_facts(text, limit, tokens) for text in texts[i]]
                for j, name in enumerate(("chars", "words", "junk")):
                    out[f"{source}_caption_{name}"][i] = [f[j] for f in facts]
            if lists["alternate"][i] is not None:
                out["alternate_caption_texts"][i] = [fold_whitespace(text or "") for text in lists["alternate"][i]]
        return self.append(batch, out)

    def rules(self) -> list[Rule]:
        f = self.cfg.filters
        rules = [
            Rule.fixed("coalesce(bad_encoding, false)", R.CAPTION_BAD_ENCODING, scope="caption"),
            Rule.fixed(f"chars > {f.max_caption_chars}", R.CAPTION_TOO_LONG, f"{f.max_caption_chars} chars",
                       scope="caption"),
            Rule.fixed("coalesce(words, 0) = 0", R.CAPTION_EMPTY, scope="caption"),
        ]
        if f.junk_captions:
            rules.append(Rule("junk IS NOT NULL", R.CAPTION_JUNK.sql_with("junk"), (R.CAPTION_JUNK,), scope="caption"))
        elif f.special_tokens:  # a model's control token breaks training whatever junk_captions says
            rules.append(Rule.fixed(f"junk = '{SPECIAL_TOKEN}'", R.CAPTION_JUNK, SPECIAL_TOKEN, scope="caption"))
        return rules + [
            Rule.fixed(f"words < {f.min_caption_words}", R.CAPTION_TOO_SHORT, f.min_caption_words, scope="caption"),
            Rule.fixed(f"words > {f.max_caption_words}", R.CAPTION_TOO_LONG, f.max_caption_words, scope="caption"),
        ]
