"""Evaluation sets, in the layouts people have, read into memory once on the driver.

- zero-shot classification: a folder with one sub-folder of images per class (as
  torchvision's ImageFolder and clip_benchmark's folder datasets lay them out); the class
  name is the folder name with ``_`` read as a space, unless ``classnames.txt`` (one a
  line, in sorted folder order) says otherwise; prompt templates from ``templates.txt``
  (one a line, ``{}`` or ``{c}`` where the class name goes; CLIP's prompt ensembling averages
  them), default ``a photo of a {}.``.
- image-text retrieval: a Parquet file (or a folder of them) with an image column
  (``image``/``jpg``/``png``/``webp``: HF datasets' Image struct or raw bytes) and a caption
  column (``caption``/``text``/``txt``: a string, or a list of strings for several captions
  an image, as COCO and Flickr30k have), or WebDataset tars (``KEY.jpg`` + ``KEY.txt``).

A set is small (thousands of images): it is read once and handed to every training job
(a Ray object), so a worker on another node needs no access to the user's path.
A missing path, a folder with no classes or a class with no images is an
:class:`EvalSetError` (one line).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "jpeg")
CAPTION_COLUMNS = ("caption", "text", "txt", "captions")
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class EvalSetError(ValueError):
    """An evaluation set that cannot be read (missing, no classes, no images, no captions)."""


@dataclass
class ClassificationSet:
    """Zero-shot classification: ``images[i]`` (encoded bytes) is of class ``labels[i]``
    (an index into ``classnames``); ``templates`` are format strings with one ``{}``."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: list[bytes]
    labels: list[int]
    task: str = field(default="zeroshot", init=False)


@dataclass
class RetrievalSet:
    """Image-text retrieval: image ``i`` (encoded bytes) is described by each of ``captions[i]``."""

    name: str
    images: list[bytes]
    captions: list[list[str]]
    task: str = field(default="retrieval", init=False)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_classification(path: str | Path, name: str | None = None) -> ClassificationSet:
    """An image folder per class (module docstring); EvalSetError if it has no classes."""
    root = Path(path)
    if not root.is_dir():
        raise EvalSetError(f"zero-shot evaluation set {root} does not exist (expected a folder with one folder of "
                           "images per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise EvalSetError(f"zero-shot evaluation set {root} has no classes (expected one folder of images per class)")
    classnames = [p.name.replace("_", " ") for p in folders]
    if (root / "classnames.txt").exists():
        classnames = _lines(root / "classnames.txt")
        if len(classnames) != len(folders):
            raise EvalSetError(f"{root / 'classnames.txt'} names {len(classnames)} classes, the folder has "
                               f"{len(folders)} class folders")
    templates = list(DEFAULT_TEMPLATES)
    if (root / "templates.txt").exists():
        templates = [t.replace("{c}", "{}") for t in _lines(root / "templates.txt")]
        bad = [t for t in templates if t.count("{}") != 1]
        if not templates or bad:
            raise EvalSetError(f"{root / 'templates.txt'}: each template needs one {{}} (or {{c}}) for the class name"
                               + (f", not {bad[0]!r}" if bad else ""))
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EvalSetError(f"zero-shot evaluation set {root}: class folder {folder.name} has no images")
        images += [p.read_bytes() for p in files]
        labels += [label] * len(files)
    return ClassificationSet(name or root.name, classnames, templates, images, labels)


def _parquet(files: list[Path], origin: Path) -> tuple[list[bytes], list[list[str]]]:
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    image_col = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in table.column_names), None)
    if image_col is None or caption_col is None:
        raise EvalSetError(f"retrieval evaluation set {origin}: needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a "
                           f"caption column ({'/'.join(CAPTION_COLUMNS)}); it has {', '.join(table.column_names)}")
    images = [v["bytes"] if isinstance(v, dict) else v for v in table.column(image_col).to_pylist()]
    captions = [c if isinstance(c, list) else [c] for c in table.column(caption_col).to_pylist()]
    return images, captions


def _webdataset(files: list[Path]) -> tuple[list[bytes], list[list[str]]]:
    import webdataset as wds  # imports torch: only where a tar set is read

    images, captions = [], []
    for sample in wds.WebDataset([str(f) for f in files], shardshuffle=False):
        image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        if image is not None and "txt" in sample:
            images.append(image)
            captions.append([sample["txt"].decode("utf-8")])
    return images, captions


def read_retrieval(path: str | Path, name: str | None = None) -> RetrievalSet:
    """Image-caption pairs from Parquet or WebDataset tars (module docstring)."""
    root = Path(path)
    if not root.exists():
        raise EvalSetError(f"retrieval evaluation set {root} does not exist (expected Parquet or WebDataset tars of "
                           "image-caption pairs)")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix in (".parquet", ".tar"))
    parquet = [f for f in files if f.suffix == ".parquet"]
    images, captions = _parquet(parquet, root) if parquet else _webdataset([f for f in files if f.suffix == ".tar"])
    keep = [i for i, (image, texts) in enumerate(zip(images, captions)) if image and any(texts)]
    if not keep:
        raise EvalSetError(f"retrieval evaluation set {root} has no image-caption pairs")
    return RetrievalSet(name or root.stem, [images[i] for i in keep], [[t for t in captions[i] if t] for i in keep])


# -- the demo world's held-out sets -------------------------------------------------------------


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def write_synthetic_sets(out: str | Path, seed: int = 0, per_class: int = 40, image_size: int = 96) -> dict[str, Path]:
    """The demo world's evaluation sets, rendered fresh (curate.synth.domain): images the run
    never saw, drawn from a random stream of their own (``curate-eval:<seed>``, disjoint from
    the corpus generator's integer seeds). Writes ``shapes/`` and ``colours/`` (zero-shot:
    ``per_class`` images a class, the other attributes random) and ``scenes.parquet``
    (retrieval: every scene of the domain once, with its canonical caption). Returns
    ``{"shapes": path, "colours": path, "scenes": path}``."""
    from curate.synth import domain

    out = Path(out)
    rng = random.Random(f"curate-eval:{seed}")
    scenes = domain.all_scenes()
    paths = {}
    for attribute, values in (("shape", domain.SHAPES), ("colour", tuple(domain.COLOURS))):
        root = out / f"{attribute}s"
        for value in values:
            folder = root / value
            folder.mkdir(parents=True, exist_ok=True)
            pool = [s for s in scenes if getattr(s, attribute) == value]
            for i in range(per_class):
                (folder / f"{i:04d}.jpg").write_bytes(_jpeg(domain.render(rng.choice(pool), image_size, rng)))
        templates = ("a {}", "a photo of a {}") if attribute == "shape" else ("a {} shape", "a photo of a {} shape")
        (root / "templates.txt").write_text("".join(t + "\n" for t in templates), encoding="utf-8")
        paths[f"{attribute}s"] = root
    rows = [{"image": {"bytes": _jpeg(domain.render(s, image_size, rng)), "path": None}, "caption": s.caption()}
            for s in scenes]
    pq.write_table(pa.Table.from_pylist(rows), out / "scenes.parquet")
    paths["scenes"] = out / "scenes.parquet"
    return paths
