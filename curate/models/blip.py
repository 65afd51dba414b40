"""BLIP models through transformers: image-text matching (ITM/ITC) and captioning.

References (``itm.model``, ``caption.model``) are what ``from_pretrained`` takes: a hub id
such as ``Salesforce/blip-itm-base-coco``, or a local directory written by
``save_pretrained`` (model + ``BlipProcessor``), plus ``curate:NAME`` for the tiny models
this package ships. Each is checked at start by loading its config, which for a local
directory reads ``config.json`` and for a hub id asks the hub (cached after the first time).
"""

from __future__ import annotations

from pathlib import Path

from curate.core.suggest import did_you_mean
from curate.models.references import (
    SHIPPED_PREFIX, ModelReferenceError, cached_hub_models, hub_reachable, shipped_model_path, shipped_models_dir,
)

_LOCAL_HINT = (
    "If this machine is offline, download the model elsewhere (huggingface-cli download ORG/NAME "
    "--local-dir DIR) and set {key} to that directory's absolute path."
)
# The BLIP checkpoints Salesforce publishes: close matches for a mistyped hub id.
KNOWN_HUB_IDS = tuple(f"Salesforce/blip-{task}-{size}{data}" for task, data in
                      (("itm", "-coco"), ("itm", "-flickr"), ("image-captioning", "")) for size in ("base", "large"))
# What each stage loads; a checkpoint saved for another task has the wrong heads.
ARCHITECTURES = {"itm": "BlipForImageTextRetrieval", "caption": "BlipForConditionalGeneration"}


def resolve(reference: str, key: str) -> str:
    """A reference as ``from_pretrained`` takes it: an absolute directory or a hub id."""
    if reference.startswith(SHIPPED_PREFIX):
        return str(shipped_model_path(reference[len(SHIPPED_PREFIX):]))
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelReferenceError(f"{key} {reference!r}: {path} has no config.json (not a save_pretrained directory)")
        return str(path.resolve())
    if reference.startswith(("/", "./", "../", "~")) or reference.count("/") != 1:
        raise ModelReferenceError(
            f"{key} {reference!r}: no such directory, and not a hub id of the form ORG/NAME "
            f"(e.g. Salesforce/blip-itm-base-coco)"
        )
    return reference


def check(reference: str, key: str, task: str) -> str:
    """Resolve and read the config: fail at start, naming the key, if it isn't a BLIP model."""
    from transformers import AutoConfig

    resolved = resolve(reference, key)
    # A hub id with no hub to ask: the local cache only, at once (huggingface_hub would retry
    # for tens of seconds before the same answer).
    offline = not Path(resolved).is_dir() and not hub_reachable()
    try:
        config = AutoConfig.from_pretrained(resolved, local_files_only=offline)
    except (OSError, ValueError) as error:
        known = [*KNOWN_HUB_IDS, *cached_hub_models(), *(f"{SHIPPED_PREFIX}{p.name}" for p in shipped_models_dir().iterdir())]
        why = ("cannot read its config: the hub is unreachable (offline, or HF_HUB_OFFLINE) and it is not in the "
               "local cache" if offline else f"cannot read its config: {_first_line(error)}")
        raise ModelReferenceError(
            f"{key} {reference!r}: {why}{did_you_mean(reference, known)}. {_LOCAL_HINT.format(key=key)}"
        ) from None
    if config.model_type != "blip":
        raise ModelReferenceError(f"{key} {reference!r}: model_type is {config.model_type!r}, expected 'blip'")
    declared = getattr(config, "architectures", None) or []
    if declared and ARCHITECTURES[task] not in declared:
        raise ModelReferenceError(
            f"{key} {reference!r}: a checkpoint for {declared}, but this stage needs {ARCHITECTURES[task]}"
        )
    return resolved


def load(resolved: str, task: str, key: str, device: str = "cpu", precision: str = "fp32"):
    """(model in eval mode on ``device``, BlipProcessor) for a resolved reference."""
    import torch
    import transformers
    from transformers import BlipProcessor

    transformers.utils.logging.disable_progress_bar()  # one bar per actor start is noise in a run's log
    cls = getattr(transformers, ARCHITECTURES[task])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    try:
        model = cls.from_pretrained(resolved, dtype=dtype)
        processor = BlipProcessor.from_pretrained(resolved)
    except (OSError, ValueError) as error:
        raise ModelReferenceError(
            f"cannot load {key} {resolved!r}: {_first_line(error)}. {_LOCAL_HINT.format(key=key)}"
        ) from None
    return model.to(device).eval(), processor


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def text_token_limit(model, tokenizer) -> int:
    """The tokens a BLIP text encoder reads: its position embeddings
    (``text_config.max_position_embeddings``, 512 for the Salesforce checkpoints), or the
    tokenizer's ``model_max_length`` when that is smaller. A ``save_pretrained`` directory
    whose tokenizer config lacks ``model_max_length`` reports a huge number: the encoder's own
    size is the limit then, where the tokenizer alone would not cut at all."""
    positions = getattr(model.config.text_config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(positions, tokenizer.model_max_length))
