"""Hugging Face ``datasets`` features in a Parquet shard's schema metadata.

``datasets.load_dataset("parquet", ...)`` reads the schema metadata key ``huggingface``
(``{"info": {"features": ...}}``) and uses a declared feature for a column whose Arrow type
matches it; other columns get the feature their Arrow type implies. Declaring the image
columns is therefore enough for them to load as ``Image()`` (decoded to PIL on access),
without curate importing ``datasets`` in its write tasks. The declarations are the JSON
``datasets.Features.to_dict()`` writes; ``Sequence`` (not ``List``) so that datasets 2.x and
3.x read it as well as 4.x and later.
"""

from __future__ import annotations

import json

import pyarrow as pa

# HF datasets' Image() storage: a column of this type (or a list of it) declared in the
# metadata loads as decoded images.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
IMAGE_FEATURE = {"_type": "Image"}
FEATURES = {
    "image": IMAGE_FEATURE,
    "image_list": {"feature": IMAGE_FEATURE, "_type": "Sequence"},
}


def with_image_features(schema: pa.Schema, columns: dict[str, str]) -> pa.Schema:
    """``schema`` with the ``huggingface`` metadata declaring ``columns`` (name -> ``image``
    or ``image_list``)."""
    features = {name: FEATURES[kind] for name, kind in columns.items()}
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features}}).encode("utf-8")
    return schema.with_metadata(metadata)
