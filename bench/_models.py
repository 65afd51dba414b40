"""Random-weight models of real size for the benchmarks, in the on-disk formats the stages
load (the same formats as tests/model_dirs.py): an open_clip ``local-dir`` and BLIP
``save_pretrained`` directories. Random weights cost exactly what trained ones cost per
image (except generate(), whose caption length depends on when EOS comes: with random
weights it rarely does, so every caption runs to max_new_tokens, the worst case)."""

from __future__ import annotations

import json
from pathlib import Path


def make_vit_b_32_dir(path: Path, seed: int = 0) -> Path:
    """open_clip ViT-B-32 (151M parameters, 224 px), random weights, as local-dir."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    if (path / "open_clip_config.json").exists():
        return path
    torch.manual_seed(seed)
    model_cfg = open_clip.get_model_config("ViT-B-32")
    model = open_clip.create_model("ViT-B-32")
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    return path


# A BLIP of "small" size: ViT-S/16 at 224 px (6 layers, width 384) and a 6-layer, width-384
# BERT. BLIP base (ViT-B/16 at 384 px, 12-layer BERT-base) is about 10x the compute per image
# and too slow for a few-minute CPU benchmark on 2 shared cores.
BLIP_SMALL = {
    "vision": {"image_size": 224, "patch_size": 16, "hidden_size": 384, "intermediate_size": 1536,
               "num_hidden_layers": 6, "num_attention_heads": 6},
    "text": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
             "max_position_embeddings": 64},
}
WORDS = ["a", "an", "the", "picture", "photo", "of", "on", "in", "with", "small", "large", "red", "green", "blue",
         "yellow", "purple", "orange", "circle", "square", "triangle", "star", "cross", "background", "white", "black"]


def make_blip_dir(path: Path, task: str, seed: int = 0) -> Path:
    """BLIP_SMALL for ``task`` ("itm" or "caption"), random weights, model + BlipProcessor."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipImageProcessor, BlipProcessor)

    if (path / "config.json").exists():
        return path
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    assert tokenizer.convert_tokens_to_ids("circle") == vocab["circle"]
    size = BLIP_SMALL["vision"]["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": size, "width": size}), tokenizer=tokenizer)
    text = {**BLIP_SMALL["text"], "vocab_size": len(vocab), "pad_token_id": 0, "bos_token_id": vocab["[DEC]"],
            "sep_token_id": vocab["[SEP]"], "eos_token_id": vocab["[SEP]"]}
    config = BlipConfig(text_config=text, vision_config=BLIP_SMALL["vision"], projection_dim=256,
                        image_text_hidden_size=256)
    torch.manual_seed(seed)
    model = (BlipForImageTextRetrieval if task == "itm" else BlipForConditionalGeneration)(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
