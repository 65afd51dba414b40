"""Zero-shot evaluation of a trained CLIP: classification and image-text retrieval.

- Classification (Radford et al. 2021, CLIP, section 3.1): each class's text embedding is
  the mean of its prompt templates' normalised embeddings
  (open_clip.build_zero_shot_classifier); an image is the class of highest cosine.
  Metrics ``<set>/top1`` (accuracy) and ``<set>/mean_per_class_recall``.
- Retrieval: cosine similarity of every image and every caption;
  ``<set>/image_to_text_R@k`` is the fraction of images whose k nearest captions include
  one of their own, ``<set>/text_to_image_R@k`` the fraction of captions whose k nearest
  images include theirs (clip_benchmark's zero-shot retrieval measures the same).

Images go through the model's own validation transform, texts through its tokenizer.
"""

from __future__ import annotations

import io

from curate.eval.evalsets import ClassificationSet, RetrievalSet

RECALL_AT = (1, 5, 10)
BATCH = 128


def load_model(name: str, checkpoint: str, device: str = "cpu", config_dir: str | None = None):
    """(model in eval mode, validation transform, tokenizer) of an open_clip checkpoint;
    ``config_dir``: model configs to register first (an architecture open_clip does not ship)."""
    import open_clip

    if config_dir:
        open_clip.add_model_config(config_dir)

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def _image_features(model, preprocess, images: list[bytes], device: str):
    import torch
    from PIL import Image

    out = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            batch = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images[start:start + BATCH]])
            out.append(model.encode_image(batch.to(device), normalize=True))
    return torch.cat(out)


def _text_features(model, tokenizer, texts: list[str], device: str):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), BATCH):
            out.append(model.encode_text(tokenizer(texts[start:start + BATCH]).to(device), normalize=True))
    return torch.cat(out)


def zero_shot(model, preprocess, tokenizer, data: ClassificationSet, device: str = "cpu") -> dict[str, float]:
    """Top-1 accuracy and mean per-class recall of zero-shot classification on ``data``."""
    import open_clip
    import torch

    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, data.classnames, data.templates,
                                                      num_classes_per_batch=10, device=device)
    predicted = (_image_features(model, preprocess, data.images, device) @ classifier).argmax(dim=1).cpu()
    labels = torch.tensor(data.labels)
    correct = predicted == labels
    recalls = [correct[labels == c].float().mean().item() for c in range(len(data.classnames)) if (labels == c).any()]
    return {f"{data.name}/top1": correct.float().mean().item(),
            f"{data.name}/mean_per_class_recall": sum(recalls) / len(recalls)}


def retrieval(model, preprocess, tokenizer, data: RetrievalSet, device: str = "cpu") -> dict[str, float]:
    """Recall@k both ways (RECALL_AT) on ``data``."""
    import torch

    texts = [t for captions in data.captions for t in captions]
    owner = torch.tensor([i for i, captions in enumerate(data.captions) for _ in captions])
    similarity = _image_features(model, preprocess, data.images, device) @ _text_features(model, tokenizer, texts, device).T
    similarity = similarity.cpu()
    out = {}
    for k in RECALL_AT:
        top_texts = similarity.topk(min(k, len(texts)), dim=1).indices  # images x k caption indices
        image_hit = (owner[top_texts] == torch.arange(len(data.images))[:, None]).any(dim=1)
        top_images = similarity.T.topk(min(k, len(data.images)), dim=1).indices  # captions x k image indices
        text_hit = (top_images == owner[:, None]).any(dim=1)
        out[f"{data.name}/image_to_text_R@{k}"] = image_hit.float().mean().item()
        out[f"{data.name}/text_to_image_R@{k}"] = text_hit.float().mean().item()
    return out


def evaluate(name: str, checkpoint: str, sets: list, device: str = "cpu", config_dir: str | None = None) -> dict[str, float]:
    """Every metric of every evaluation set for one checkpoint."""
    model, preprocess, tokenizer = load_model(name, checkpoint, device, config_dir)
    metrics = {}
    for data in sets:
        metrics.update(zero_shot(model, preprocess, tokenizer, data, device) if isinstance(data, ClassificationSet)
                       else retrieval(model, preprocess, tokenizer, data, device))
    return metrics
