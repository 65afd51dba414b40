"""The run configuration: pydantic models, validated once at start.

Every key here is public and documented in docs/config.md. Unknown keys are errors
(``extra="forbid"``) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from curate.core.suggest import did_you_mean


class ConfigError(ValueError):
    """A config mistake, phrased for the user: it names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


InputFormat = Literal["parquet", "csv", "tsv", "jsonl"]
_EXTENSION_FORMATS: dict[str, InputFormat] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}


class DocumentsInputConfig(_Section):
    """How ``input.kind: documents`` rows are laid out (docs/formats.md)."""

    layout: Literal["obelics", "mmc4"] = Field(
        "obelics", description="obelics: aligned texts/images lists; mmc4: text_list + image_info"
    )
    texts_col: str = Field("texts", description="obelics: list, a paragraph or null at each position")
    images_col: str = Field("images", description="obelics: list, an image URL or null at each position")
    text_list_col: str = Field("text_list", description="mmc4: list of sentences")
    image_info_col: str = Field("image_info", description="mmc4: list of structs, one per image")
    url_field: str = Field("raw_url", description="mmc4: the image URL field of an image_info entry")
    position_field: str | None = Field(
        "matched_text_index", description="mmc4: the sentence an image sits at (placement: original); None: at the end"
    )
    keep_columns: list[str] = Field([], description="other input columns carried to the manifest and output")


class InputConfig(_Section):
    path: str = Field(description="file, glob or folder; local, s3:// or gs://")
    format: InputFormat | None = Field(None, description="inferred from the extension when omitted")
    url_col: str = "url"
    caption_col: str = "caption"
    encoding: str = Field(
        "utf-8", description="text inputs (csv, tsv, jsonl): their encoding, e.g. cp1252; a UTF-16/32 byte-order mark wins"
    )
    kind: Literal["pairs", "documents"] = Field(
        "pairs", description="pairs: one image and its alt-text per row; documents: interleaved web documents"
    )
    documents: DocumentsInputConfig = DocumentsInputConfig()
    merge_same_url: bool = Field(
        True, description="pairs: rows with the same URL are one sample, fetched once; the other rows' captions are its "
        "alternate captions, scored and kept like the original"
    )
    max_captions_per_url: int = Field(
        10, ge=1, description="captions of one URL's sample: its own and the first distinct others; further rows with "
        "that URL are recorded but their captions not scored"
    )
    keep_columns: list[str] | Literal["all"] = Field(
        [], description="pairs: other input columns (LICENSE, punsafe...) carried with their own types into the "
        "manifest and each output sample's json and Parquet row; all: every column (those named like one of "
        "curate's as input_<name>); documents: input.documents.keep_columns"
    )

    @field_validator("keep_columns")
    @classmethod
    def _distinct_columns(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"a column is named twice in {value}")
        return value

    @model_validator(mode="after")
    def _keep_columns_of_kind(self) -> "InputConfig":
        if self.kind == "documents" and self.keep_columns:
            raise ValueError("input.keep_columns: for documents, use input.documents.keep_columns (carried as the "
                             "document's metadata JSON)")
        return self

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (a Python codec name: utf-8, cp1252, latin-1, utf-16, shift_jis...)") from None
        return value


class InterleavedConfig(_Section):
    """Documents runs: which images stay in a document, where they go, which documents stay
    (docs/formats.md). Every key is decided from stored scores: a refilter may change any."""

    min_sim: float = Field(
        0.15, ge=-1, le=1, description="an image whose best CLIP cosine to any text of its document is lower is dropped"
    )
    min_itm: float | None = Field(
        None, ge=0, le=1, description="needs itm.model: an image is placed only before a text whose ITM P(match) "
        "with it is at least this; an image no shortlisted text reaches is dropped (itm_below)"
    )
    placement: Literal["assignment", "original"] = Field(
        "assignment", description="assignment: max-weight bipartite matching of images to texts on CLIP "
        "similarity (as MMC4); original: where the input had them"
    )
    placement_by: Literal["clip", "tiebreak", "itm"] = Field(
        "clip", description="the matching's weights: clip: the CLIP cosine; tiebreak: the cosine + tie_margin x "
        "ITM P(match), so ITM decides between texts CLIP finds about equally similar; itm: ITM P(match) over the "
        "CLIP shortlist (needs itm.model for tiebreak and itm)"
    )
    tie_margin: float = Field(
        0.02, ge=0, le=1, description="placement_by tiebreak: ITM can reverse CLIP's preference only between texts "
        "whose cosines differ by less than this"
    )
    caption_unmatched: bool = Field(
        False, description="needs caption.model: an image no text of its document describes is kept with a "
        "synthetic caption that passes the filter, written as its text, instead of dropped"
    )
    min_images: int = Field(1, ge=0, description="documents left with fewer images are dropped (OBELICS: 1)")
    max_document_images: int | None = Field(
        None, ge=0, description="documents with more valid images (downloaded, passing the image rules) are dropped "
        "(OBELICS: 30)"
    )
    min_words: int = Field(0, ge=0, description="documents with fewer words of text are dropped (OBELICS: 10)")
    max_words: int | None = Field(None, ge=0, description="documents with more words of text are dropped (OBELICS: 2000)")
    min_image_text_ratio: float | None = Field(
        None, ge=0, description="documents with fewer kept images per word of text are dropped"
    )
    max_image_text_ratio: float | None = Field(
        None, ge=0, description="documents with more kept images per word of text are dropped (image dumps)"
    )
    max_images: int | None = Field(30, ge=1, description="images kept per document, most similar first")


class OutputConfig(_Section):
    path: str = Field(description="the run directory (RUN); training shards go to RUN/output/")
    formats: list[Literal["webdataset", "parquet"]] = ["webdataset", "parquet"]
    samples_per_shard: int = Field(10_000, ge=1)

    @field_validator("path")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/") or value  # `--out run/` (tab completion) is the run `run`

    @field_validator("formats")
    @classmethod
    def _nonempty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one of webdataset, parquet")
        return list(dict.fromkeys(value))


# encode_format -> (default encode_quality, lowest, highest, what the number means). For
# png, img2dataset passes it to cv2 as the zlib compression level, which must be 0-9.
ENCODE_QUALITY: dict[str, tuple[int, int, int, str]] = {
    "jpg": (95, 1, 100, "JPEG quality"),
    "webp": (95, 1, 100, "WebP quality"),
    "png": (3, 0, 9, "PNG compression level (lossless; 9 smallest and slowest)"),
}


class DownloadConfig(_Section):
    image_size: int = Field(256, ge=8, le=8192)
    resize_mode: Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = "border"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int | None = Field(
        None, ge=0, le=100, validate_default=True, description="jpg, webp: quality 1-100 (default 95); png: compression level 0-9 (default 3)"
    )
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0)
    processes: int = Field(1, ge=1)
    threads: int = Field(16, ge=1)
    shard_size: int = Field(10_000, ge=1, description="rows per download shard: the unit of resume")
    write_retry_pause: float = Field(
        1.0, ge=0, description="factor on img2dataset's pauses between retries of writing its shard lists "
        "(1: its own, ~3 min before a full disk stops the run; 0: retry at once)"
    )
    user_agent_token: str | None = "curate"
    disallowed_header_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]
    max_image_pixels: int = Field(
        178_956_970, ge=1, description="images declaring more pixels are refused (decompression bombs)"
    )
    allow_private_hosts: bool = Field(False, description="fetch from any address (loopback, private, link-local...)")
    allowed_networks: list[str] = Field(
        [], description="non-public addresses or CIDR ranges that may still be fetched (an internal mirror)"
    )
    resolve: dict[str, str] = Field(
        {}, description="host -> address overrides, like curl --resolve; the address is still checked"
    )
    max_body_bytes: int = Field(32 * 2**20, ge=1, description="bodies larger than this are refused while streaming")
    max_fetch_seconds: float = Field(
        60.0, gt=0, description="a whole request (connect, headers and body) must end within this; timeout is per read"
    )
    shard_timeout: float = Field(
        3600.0, gt=0, description="a download shard ends within this many seconds: rows not fetched by then are "
        "download_failed with reason shard_timeout (curate retry fetches them again)"
    )
    max_per_host: int | None = Field(
        None, ge=1, description="requests in flight to one host at once, over the whole run; None: no limit"
    )
    per_host_rps: float | None = Field(
        None, gt=0, description="requests started per second to one host, over the whole run; None: no limit"
    )
    max_retry_after: float = Field(
        60.0, ge=0, description="seconds a row may wait in total on Retry-After answers (429, 503) before it "
        "fails with that status; 0: Retry-After is not waited for"
    )
    max_redirects: int = Field(5, ge=0, description="longer redirect chains are refused (too_many_redirects)")
    max_decode_bytes: int = Field(
        512 * 2**20, ge=1, description="images whose decoded pixels (width x height x channels x bytes per channel, "
        "from the header) would take more are refused before decoding"
    )

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _unquoted_no(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `no` (or `off`) as false: `resize_mode: no` means "no".
        return "no" if value is False else value

    @field_validator("encode_quality")
    @classmethod
    def _quality_for_format(cls, value: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("encode_format")  # absent when encode_format itself is invalid
        if fmt is None:
            return value
        default, low, high, meaning = ENCODE_QUALITY[fmt]
        if value is None:
            return default
        if not low <= value <= high:
            raise ValueError(f"{value} does not fit encode_format {fmt}: for {fmt} it is the {meaning}, "
                             f"{low}-{high} (leave it out for the default, {default})")
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("resolve")
    @classmethod
    def _addresses_parse(cls, value: dict[str, str]) -> dict[str, str]:
        import ipaddress

        for address in value.values():
            ipaddress.ip_address(address)
        return {host.lower().rstrip("."): address for host, address in value.items()}


# Control tokens of the formats curate exports and of the chat templates their trainers apply:
# in a training caption each would be read as structure, not text (LLaVA: a second <image>
# takes the next sample's image features; LLaMA: </s> ends the sequence).
SPECIAL_TOKENS = (
    "<image>", "<im_start>", "<im_end>", "<im_patch>",  # LLaVA (llava/constants.py)
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",  # Llama 1/2, Mistral
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",  # ChatML (Qwen, OpenAI), GPT-2
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",  # Qwen2-VL
)


class FilterConfig(_Section):
    min_side: int = Field(64, ge=0, description="shorter side of the original image, in pixels")
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    max_side: int | None = Field(None, ge=1, description="longer side of the original image, in pixels; "
                                 "None: no limit (OBELICS: 20000)")
    min_caption_words: int = Field(2, ge=0)
    max_caption_words: int = Field(256, ge=1)
    max_caption_chars: int = Field(4096, ge=1, description="longer captions are filtered before any text rule runs")
    max_caption_tokens: int | None = Field(
        None, ge=1, description="captions longer than this many tokens in an enabled text model's own tokenizer "
        "(CLIP's, BLIP ITM's; start and end tokens counted) are filtered; None: off"
    )
    junk_captions: bool = True
    special_tokens: list[str] = Field(
        list(SPECIAL_TOKENS), description="a caption holding one of these strings (a model's control tokens: "
        "LLaVA's <image>, Llama's </s> and [INST], ChatML's <|im_start|>, ...) is filtered as "
        "caption_junk:special_token, also with junk_captions off; [] turns the check off")


class KeepFraction(_Section):
    """A model stage's quantile threshold: ``keep_fraction`` keeps the top fraction of the
    run's scores, resolved into the stage's ``threshold_field`` at the decision
    (curate.pipeline.quantiles). One or the other: a keep_fraction replaces the threshold's
    default (ITM's 0.5) but not a value the user set."""

    threshold_field: ClassVar[str] = "min_score"
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="keep the top fraction of the run's scores of this stage (DataComp: 0.3); "
        "resolves the stage's threshold at the decision")

    @model_validator(mode="before")
    @classmethod
    def _one_threshold(cls, data):
        # On the raw section, before validation, so that the saved config says `<threshold>: null`.
        field = cls.threshold_field
        if not isinstance(data, dict) or data.get("keep_fraction") is None:
            return data
        if data.get(field) not in (None, AUTO):
            raise ValueError(f"set {field} or keep_fraction, not both (keep_fraction resolves {field} over the whole run)")
        return {**data, field: None}


class ModelComputeConfig(_Section):
    """How a model stage runs: a Ray actor pool, one model load per actor."""

    batch_size: int = Field(64, ge=1)
    # Unset (None): sized when the run starts from the Ray cluster's resources, so every
    # enabled model stage fits (curate.pipeline.pools); explicit values are kept and checked.
    actors: int | None = Field(None, ge=1, description="actor pool size; None: sized from the cluster")
    num_cpus: float | None = Field(None, gt=0, description="CPUs reserved per actor; None: sized from the cluster")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; None: the cluster's GPUs shared by cost")
    threads: int | None = Field(None, ge=1, description="torch threads per actor; None: its CPUs, at least 1")

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _ray_fractions(cls, value: float | None) -> float | None:
        # Ray schedules fractions of a CPU or GPU only below one: 1.5 would fail at start.
        if value is not None and value > 1 and value != int(value):
            raise ValueError(f"{value:g}: Ray takes a fraction below 1 or a whole number")
        return value
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on GPU, fp32 on CPU")


# A judge's threshold: a number, ``auto`` (calibrated on the run against the other judges:
# curate.pipeline.calibration), a published value by name, or None (score only).
AUTO = "auto"
# Published CLIP-score thresholds (docs/config.md, Thresholds): LAION-400M (Schuhmann et al.
# 2021), LAION-2B English (Schuhmann et al. 2022), DataComp's ViT-B/32 baseline (Gadre et al.
# 2023). Each holds for OpenAI's CLIP ViT-B/32 only.
PUBLISHED_CLIP_THRESHOLDS = {"laion-400m": 0.3, "laion-2b-en": 0.28, "datacomp-b32": 0.25}
# BLIP's filter: the ITM head's decision, P(match) >= 0.5 (Li et al. 2022, section 3.3).
PUBLISHED_ITM_THRESHOLDS = {"blip": 0.5}


def _judge_threshold(value, published: dict[str, float], key: str):
    """``auto``, None, a number, or a published name (resolved to its number)."""
    if isinstance(value, str) and value != AUTO:
        name = value.strip().lower()
        if name in published:
            return published[name]
        try:
            return float(name)
        except ValueError:
            names = ", ".join([AUTO, *published])
            raise ValueError(f"{key}: {value!r} is not a number, null or one of {names}") from None
    return value


class ClipConfig(ModelComputeConfig, KeepFraction):
    threshold_field: ClassVar[str] = "min_score"
    model: str | None = Field(None, description="ViT-B-32 | hf-hub:org/name | local-dir:/path | curate:tiny-clip; None: stage off")
    pretrained: str | None = Field(None, description="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    min_score: Annotated[float, Field(ge=-1, le=1)] | Literal["auto"] | None = Field(
        AUTO, description="filter: clip_score below this is filtered; auto: calibrated on the run against the other "
        "judges (CLIP alone: score only); a published value by name (laion-400m, laion-2b-en, datacomp-b32); null: score only")

    @field_validator("min_score", mode="before")
    @classmethod
    def _published_clip(cls, value):
        return _judge_threshold(value, PUBLISHED_CLIP_THRESHOLDS, "clip.min_score")


class ItmConfig(ModelComputeConfig, KeepFraction):
    threshold_field: ClassVar[str] = "min_prob"
    model: str | None = Field(
        None, description="BLIP ITM: hub id (Salesforce/blip-itm-base-coco) | /local/dir | curate:tiny-blip-itm; None: stage off"
    )
    # BLIP's filter is the ITM head's decision: a text is noisy when the head predicts
    # "unmatched", i.e. P(match) < 0.5 (Li et al. 2022, BLIP, section 3.3). None: score only.
    # The default is BLIP's decision boundary: P(match) is a probability, and its 0.5 means the
    # same for any ITM head, unlike a cosine's scale (CLIP's default is auto). Measured on the
    # blind-judge worlds, calibrating ITM too lost true pairs (docs/capfilt.md, Judges).
    min_prob: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] | None = Field(
        0.5, description="filter: a caption whose P(match) is below this fails (default: BLIP's 0.5); auto: "
        "calibrated on the run against the other judges (fallback 0.5); blip: 0.5; null: score only")

    @field_validator("min_prob", mode="before")
    @classmethod
    def _published_itm(cls, value):
        return _judge_threshold(value, PUBLISHED_ITM_THRESHOLDS, "itm.min_prob")
    document_texts: int | None = Field(
        3, ge=1, description="documents runs: each image is scored against this many texts of its document, those "
        "CLIP finds most similar (BLIP's shortlist-then-rerank), and against its synthetic captions; null: every text"
    )


class CaptionConfig(ModelComputeConfig):
    batch_size: int = Field(32, ge=1)
    model: str | None = Field(
        None, description="BLIP captioner: hub id (Salesforce/blip-image-captioning-base) | /local/dir | curate:NAME"
    )
    num_captions: int = Field(3, ge=1, le=32, description="synthetic captions per image (K)")
    mode: Literal["nucleus", "beam"] = "nucleus"
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling (BLIP's CapFilt uses 0.9)")
    num_beams: int = Field(3, ge=1, description="beam mode: beams (at least num_captions)")
    max_new_tokens: int = Field(30, ge=1, le=512)
    prompt: str | None = Field(None, description='a prefix such as "a picture of", stripped from the result')
    rejected_images: bool = Field(
        False, description="also caption images the image rules rejected (their samples stay filtered)"
    )
    seed: int = Field(0, description="sampling seed per batch: the same batch gets the same captions")

    @model_validator(mode="after")
    def _beams_cover_captions(self) -> "CaptionConfig":
        if self.mode == "beam" and self.num_beams < self.num_captions:
            raise ValueError(f"num_beams ({self.num_beams}) must be at least num_captions ({self.num_captions})")
        return self


class AestheticConfig(ModelComputeConfig, KeepFraction):
    """The aesthetic stage (curate.stages.aesthetic): LAION's improved aesthetic predictor."""

    model: str | None = Field(
        None, description="a .pth/.safetensors state dict of LAION's improved-aesthetic-predictor layout, or "
        "curate:tiny-aesthetic; None: stage off (needs clip.model: it reads the CLIP image embeddings)"
    )
    min_score: float | None = Field(None, description="filter: aesthetic_score below this is filtered (LAION-Aesthetics: 5, 6, 6.5)")
    # Five matrix products per batch: a small share of a CPU and large batches.
    batch_size: int = Field(1024, ge=1)
    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved per actor")
    num_gpus: float | None = Field(0, ge=0, description="GPUs per actor: 0, the head runs with numpy")


class CapfiltConfig(_Section):
    mode: Literal["capfilt", "filter_only", "caption_only"] = Field(
        "capfilt", description="capfilt: filter original and synthetic captions; filter_only: no captioner; "
        "caption_only: synthetic captions replace the original, unfiltered"
    )
    max_synthetic: int = Field(1, ge=0, description="synthetic captions kept per image, best first")
    synthetic_min_prob: float | None = Field(
        None, ge=0, le=1, description="a stricter itm.min_prob for synthetic captions; None: itm.min_prob"
    )
    prefer: Literal["original", "best"] = Field(
        "original", description="training caption: the original when it passes, else the best kept; or the best kept"
    )


class DedupeConfig(_Section):
    enabled: bool = True
    exact: bool = Field(True, description="identical bytes (sha256) or identical decoded pixels")
    near: bool = Field(True, description="CLIP image-embedding cosine >= threshold (needs the CLIP stage)")
    phash: bool = Field(False, description="64-bit perceptual hashes within phash_distance bits (the phash stage; no CLIP needed)")
    phash_distance: int = Field(10, ge=0, le=64, description="largest Hamming distance of two pHashes of one picture "
                                "(10: Krawetz 2011, 'Looks Like It'); docs/dedupe.md")
    threshold: float | None = Field(None, gt=0, le=1, description="None: the documented default (docs/dedupe.md)")
    keep: str = Field("clip_score", description="the copy of a duplicate group that is kept: the highest score of "
                      "clip_score | itm | resolution | first (the smallest sample_id), or a score a stage offers")
    method: Literal["auto", "flat", "ivf", "clustered"] = "auto"
    against: list[str] = Field([], description="earlier runs or saved embedding indexes to dedupe against")


class ReportConfig(_Section):
    enabled: bool = Field(True, description="write RUN/report/index.html at the end of a run (docs/report.md)")
    samples: int = Field(24, ge=1, le=500, description="thumbnails per grid (kept; half per filter reason)")


class StorageConfig(_Section):
    """Where buckets are served. Credentials never go here: they come from the environment
    (AWS_ACCESS_KEY_ID, ...) or the provider's own files, so a saved config leaks nothing."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph, R2); sets AWS_ENDPOINT_URL")
    region: str | None = Field(None, description="bucket region; sets AWS_DEFAULT_REGION")
    shared_filesystem: bool = Field(
        False, description="a local output.path is mounted on every node of the Ray cluster (NFS, Lustre); "
        "without it a multi-node cluster needs a bucket as the run directory"
    )

    def environment(self) -> dict[str, str]:
        env = {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": self.region}
        return {k: v for k, v in env.items() if v}


class ManifestConfig(_Section):
    # Each manifest task's DuckDB spills its tables to a local temporary directory past this
    # much memory; its joins need memory that grows with a partition's rows. 1GB decides a
    # partition of 1M rows (manifest.partition_rows) with the CapFilt decision in one GROUP BY
    # (bench/driver_memory.py; an ordered list aggregate ran out of it).
    memory_limit: str = Field("1GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
                              description="DuckDB memory_limit of each task of the manifest step, e.g. 512MB, 4GB")
    partition_rows: int = Field(1_000_000, ge=1, description="input rows per partition of the manifest step "
                                "(one Ray task decides and writes each) and per prepare task of a Parquet input cut "
                                "at its row groups")


class RayConfig(_Section):
    address: str | None = Field(None, description="an existing cluster; None starts Ray locally")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: CPUs to give Ray")


class CurateConfig(_Section):
    input: InputConfig
    output: OutputConfig
    download: DownloadConfig = DownloadConfig()
    filters: FilterConfig = FilterConfig()
    clip: ClipConfig = ClipConfig()
    itm: ItmConfig = ItmConfig()
    caption: CaptionConfig = CaptionConfig()
    capfilt: CapfiltConfig = CapfiltConfig()
    aesthetic: AestheticConfig = AestheticConfig()
    interleaved: InterleavedConfig = InterleavedConfig()
    dedupe: DedupeConfig = DedupeConfig()
    report: ReportConfig = ReportConfig()
    storage: StorageConfig = StorageConfig()
    manifest: ManifestConfig = ManifestConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _infer_format(self) -> "CurateConfig":
        if self.input.format is None:
            self.input.format = infer_format(self.input.path)
        return self

    @model_validator(mode="after")
    def _capfilt_needs_models(self) -> "CurateConfig":
        mode = self.capfilt.mode
        if mode == "caption_only" and not self.caption.model:
            raise ValueError("capfilt.mode caption_only needs caption.model")
        if mode == "capfilt" and self.caption.model and not (self.itm.model or self.clip.model):
            raise ValueError("capfilt.mode capfilt needs a filter for the synthetic captions: set itm.model or clip.model")
        return self

    @property
    def captioning(self) -> bool:
        """Whether the captioner runs: a model is set and the mode uses synthetic captions."""
        return bool(self.caption.model) and self.capfilt.mode != "filter_only"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def infer_format(path: str) -> InputFormat:
    from curate.core.input_decoding import split_compression

    lowered = split_compression(path.rstrip("/").lower())[0]  # urls.csv.gz is csv
    for extension, fmt in _EXTENSION_FORMATS.items():
        if lowered.endswith(extension) or lowered.endswith(f"*{extension}"):
            return fmt
    raise ConfigError(
        f"input.format: cannot infer the format of {path!r} from its extension; "
        f"set input.format to one of parquet, csv, tsv, jsonl (compressed: .gz, .bz2, .zst after the format's extension)"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set clip.min_score=0.3")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else None


def set_key(data: dict, parts: list[str], value) -> None:
    """``data[parts[0]]...[parts[-1]] = value`` in a config as plain dicts, making missing
    sections; ValueError naming the part when a section along the way is a value."""
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        try:
            set_key(data, parts, value)
        except ValueError as error:
            raise ConfigError(f"--set {text!r}: {error}") from None
    return data


def format_validation_error(error: ValidationError) -> str:
    lines = ["invalid config:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")  # pydantic's wording around our own ValueErrors
        named = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)+): (.*)", message, re.S)
        if named and (key == "(top level)" or named.group(1).startswith(f"{key}.")):  # our cross-key checks name their key first
            key, message = named.groups()
        if item["type"] == "extra_forbidden":
            known = _section_keys(item["loc"][:-1])
            message = (f"unknown key{did_you_mean(str(item['loc'][-1]), known)} (see docs/config.md for the "
                       "allowed keys)")
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "literal_error" and isinstance(item.get("input"), bool):
            # YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans
            message += f"; YAML read an unquoted word as the boolean {str(item['input']).lower()}: quote it"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _section_keys(path: tuple) -> list[str]:
    """The keys of the config section at ``path`` (("download",) -> download's keys)."""
    model: type[BaseModel] = CurateConfig
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def validate(data: dict) -> CurateConfig:
    try:
        return CurateConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(stored_yaml: str, cfg: CurateConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """What ``cfg`` changes from a run's stored config.yaml, as ``key: old -> new`` lines,
    leaving out keys that start with one of ``ignore``.

    The stored config is validated again first: a key that this version of curate added
    takes its default on both sides, so a run started by an older version resumes. (A key
    this version no longer knows is compared as stored, and shows up as a change.)"""
    old = yaml.safe_load(stored_yaml) or {}
    try:
        old = validate(old).model_dump(mode="json")
    except ConfigError:
        pass
    before, after = _flat(old), _flat(cfg.model_dump(mode="json"))
    from curate.core.storage import normalized_path  # paths are compared normalised: run/ is ./run

    for side in (before, after):
        for key in ("input.path", "output.path"):
            if isinstance(side.get(key), str):
                side[key] = normalized_path(side[key])
    shown = lambda side, key: repr(side[key]) if key in side else "(absent)"  # noqa: E731
    return [f"{key}: {shown(before, key)} -> {shown(after, key)}" for key in sorted(before.keys() | after.keys())
            if not key.startswith(ignore) and (key not in before or key not in after or before[key] != after[key])]


def load_config(path: str | Path | None, overrides: list[str] = (), out: str | None = None,
                fill_missing: dict[str, Any] | None = None) -> CurateConfig:
    """The validated config of YAML file ``path`` with ``--set`` ``overrides`` and ``--out``;
    ``fill_missing`` gives dotted keys a value where the file and overrides give none
    (``curate describe`` needs no paths). ConfigError names what is wrong."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides))
    if out is not None:
        data.setdefault("output", {})["path"] = out
    for key, value in (fill_missing or {}).items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.setdefault(name, value)
    return validate(data)
