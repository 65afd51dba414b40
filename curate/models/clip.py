"""CLIP models through open_clip, with the model's own preprocess transform and tokenizer.

References (``clip.model`` + optional ``clip.pretrained``), exactly as open_clip takes them:
``ViT-B-32`` + ``laion2b_s34b_b79k``; ``hf-hub:org/name``; ``local-dir:/path`` (a directory
with ``open_clip_config.json`` and weights); and ``curate:tiny-clip`` for the shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.core.suggest import did_you_mean
from curate.models.references import SHIPPED_PREFIX, ModelReferenceError, shipped_model_path

_LOCAL_HINT = (
    "If this machine is offline, download the model elsewhere and pass a directory in open_clip's "
    "local-dir format instead: clip.model: local-dir:/abs/path (open_clip_config.json + "
    "open_clip_model.safetensors)."
)


@dataclass(frozen=True)
class ClipRef:
    model: str
    pretrained: str | None

    def describe(self) -> str:
        return self.model + (f" (pretrained {self.pretrained})" if self.pretrained else "")


def resolve(model: str, pretrained: str | None) -> ClipRef:
    """Expand ``curate:`` references and check what can be checked without loading."""
    if model.startswith(SHIPPED_PREFIX):
        return ClipRef(f"local-dir:{shipped_model_path(model[len(SHIPPED_PREFIX):])}", None)
    if model.startswith("local-dir:"):
        path = Path(model[len("local-dir:"):])
        if not (path / "open_clip_config.json").is_file():
            raise ModelReferenceError(
                f"clip.model {model!r}: {path} is not an open_clip local-dir (no open_clip_config.json there)"
            )
        return ClipRef(f"local-dir:{path.resolve()}", None)
    if model.startswith("hf-hub:"):
        return ClipRef(model, pretrained)
    names = model_names()
    if model not in names:
        raise ModelReferenceError(
            f"clip.model {model!r}: not an open_clip model name{did_you_mean(model, names)} "
            f"(see open_clip.list_models()), nor hf-hub:org/name, local-dir:/path or curate:NAME"
        )
    import open_clip

    if pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(model):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ModelReferenceError(f"clip.pretrained {pretrained!r}: not a tag of {model}{did_you_mean(pretrained, tags)}; "
                                  f"its tags: {tags}")
    return ClipRef(model, pretrained)


def model_names() -> list[str]:
    """open_clip's model names, as ``open_clip.list_models()`` lists them: its
    ``model_configs/*.json``, read from the installed package without importing it (that
    imports torch: tens of seconds on a busy machine, to reject a typo)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    names = sorted(f.stem for folder in folders if folder.is_dir() for f in folder.glob("*.json"))
    if names:
        return names
    import open_clip  # a layout without the folder: ask the library

    return open_clip.list_models()


def embedding_dim(ref: ClipRef) -> int | None:
    """The dimension of a resolved model's embeddings, from its config alone (no weights
    loaded); None where only the hub knows (hf-hub: references)."""
    import json

    import open_clip

    if ref.model.startswith("local-dir:"):
        config = json.loads((Path(ref.model[len("local-dir:"):]) / "open_clip_config.json").read_text())
        return int(config["model_cfg"]["embed_dim"])
    config = None if ref.model.startswith("hf-hub:") else open_clip.get_model_config(ref.model)
    return int(config["embed_dim"]) if config else None


def load(ref: ClipRef, device: str = "cpu", precision: str = "fp32"):
    """(model in eval mode, preprocess transform, tokenizer) for a resolved reference."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            ref.model, pretrained=ref.pretrained, device=device, precision=precision
        )
        tokenizer = open_clip.get_tokenizer(ref.model)
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelReferenceError(f"cannot load CLIP model {ref.describe()}: {error}. {_LOCAL_HINT}") from None
    return model.eval(), preprocess, tokenizer


def context_length(tokenizer) -> int:
    """The tokens an open_clip tokenizer hands the text tower (its model's ``context_length``:
    77 for CLIP ViT models, 16 for ``curate:tiny-clip``); longer texts are cut to it."""
    return int(tokenizer.context_length)


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """How many tokens each of ``texts`` is in ``tokenizer`` (an open_clip tokenizer), its
    start and end tokens included, counted before the tokenizer cuts to ``context_length``.

    open_clip's own BPE tokenizer (every OpenAI and LAION CLIP) is counted exactly as it
    encodes; the Hugging Face tokenizers some hf-hub models use are counted on the text
    after the wrapper's own cleaning, with their special tokens."""
    if hasattr(tokenizer, "sot_token_id"):  # open_clip.tokenizer.SimpleTokenizer
        return [len(tokenizer.encode(text)) + 2 for text in texts]
    clean = getattr(tokenizer, "clean_fn", None)
    if clean is None:  # SigLipTokenizer cleans with these two
        from open_clip.tokenizer import basic_clean, canonicalize_text

        clean = lambda text: canonicalize_text(basic_clean(text))  # noqa: E731
    encoded = tokenizer.tokenizer([clean(text) for text in texts], truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]
