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
