"""Tiny random-weight models written in the exact on-disk formats the hubs serve, so the
real loading code paths are tested offline."""

from __future__ import annotations

import json
from pathlib import Path


def make_open_clip_dir(path: Path, seed: int = 0) -> Path:
    """An open_clip ``local-dir`` (open_clip_config.json + open_clip_model.safetensors) with
    a config the package has never seen."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 40, "layers": 1, "width": 32, "patch_size": 10, "head_width": 16},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "resize_mode": "shortest"}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    return path


BLIP_WORDS = ["a", "picture", "of", "red", "blue", "cat", "dog", "on", "the", "grass", "sofa", "small", "large"]


def make_blip_dir(path: Path, task: str, seed: int = 0, model_max_length: int | None = 40) -> Path:
    """A random-weight BLIP directory as ``save_pretrained`` writes it (model + BlipProcessor),
    with a word-level BERT tokenizer: ``task`` is ``itm`` or ``caption``. The text encoder has
    40 positions; ``model_max_length=None`` leaves the tokenizer without a limit of its own,
    as many saved tokenizers are."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + BLIP_WORDS)}
    # transformers 5 ignores BertTokenizer(vocab_file=...): pass the vocabulary itself.
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", **limit)
    assert tokenizer.convert_tokens_to_ids("cat") == vocab["cat"]
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    text = {
        "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 40, "pad_token_id": 0,
        "bos_token_id": vocab["[DEC]"], "sep_token_id": vocab["[SEP]"], "eos_token_id": vocab["[SEP]"],
    }
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)
    torch.manual_seed(seed)
    cls = BlipForImageTextRetrieval if task == "itm" else BlipForConditionalGeneration
    model = cls(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
