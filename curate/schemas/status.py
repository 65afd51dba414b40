"""Statuses and reason codes: the vocabulary of the manifest.

Every input row ends with exactly one ``status`` and a machine-readable ``reason``.
Reasons are ``code`` or ``code:detail`` (e.g. ``http_404``, ``clip_score_below:0.28``,
``duplicate_of:00000-000000042``) so they can be grouped with ``split_part(reason, ':', 1)``.
A detail is ASCII letters, digits and ``._+-`` only, so a reason is safe to print whatever
text it was built from (a server's error message, say); the one exception is an IPv6
address, written in brackets as in a URL (``private_host:[::1]``), whose colons stay. The
detail is everything after the first ``:``.
"""

from __future__ import annotations

import re
from enum import Enum


class Status(str, Enum):
    KEPT = "kept"
    DOWNLOAD_FAILED = "download_failed"
    FILTERED = "filtered"
    DUPLICATE = "duplicate"
    BLOCKED = "blocked"


# Reason codes, grouped by the status they go with. Documented in docs/manifest.md.
BLOCKED_REASONS = {
    "url_missing": "the url cell is NULL or empty",
    "url_invalid": "the url cannot be parsed or has no host",
    "scheme_not_allowed": "only http and https are fetched (detail: the scheme)",
    "private_host": "the host's address is in a special-purpose range (detail: the address, IPv6 in brackets)",
    "redirect_to_private_host": "a redirect led to such an address; not followed (detail: the address)",
}
DOWNLOAD_REASONS = {
    "http_<code>": "the server answered with this HTTP status",
    "timeout": "no complete answer within download.timeout seconds",
    "connection_error": "the host could not be resolved or the connection failed",
    "too_many_redirects": "a redirect loop or too long a redirect chain",
    "not_an_image": "the body could not be decoded as an image (HTML, SVG, random bytes)",
    "image_too_large": "declared pixel count above download.max_image_pixels (decompression bomb)",
    "body_too_large": "the body exceeds download.max_body_bytes (declared or streamed; detail: the cap)",
    "opted_out": "the server sent an X-Robots-Tag forbidding AI training use",
    "download_error": "any other download error (detail: the downloader's message)",
    "missing_from_downloader": "the downloader returned no row for this sample",
}
FILTER_REASONS = {
    "image_too_small": "shorter original side below filters.min_side (detail: the threshold)",
    "aspect_ratio_above": "long/short side above filters.max_aspect_ratio",
    "caption_empty": "the caption is NULL or only whitespace",
    "caption_too_short": "fewer words than filters.min_caption_words",
    "caption_too_long": "more words than filters.max_caption_words",
    "caption_junk": "the caption looks like a file name, boilerplate or a URL (detail: which)",
    "caption_bad_encoding": "the caption was not valid UTF-8",
    "clip_score_below": "clip_score below clip.min_score",
}
# Documents runs (input.kind: documents): reasons of a document row (manifest) ...
DOCUMENT_REASONS = {
    "malformed_document": "the row is not a document of input.documents.layout (detail: what is wrong)",
    "too_few_images": "fewer images left than interleaved.min_images (detail: the threshold)",
    "too_few_words": "fewer words of text than interleaved.min_words (detail: the threshold)",
}
# ... and of an image row of a document (manifest_images), besides the pair reasons above.
DOCUMENT_IMAGE_REASONS = {
    "sim_below": "best CLIP cosine to any text of its document below interleaved.min_sim",
    "document_has_no_text": "its document has no text to place it next to",
    "over_max_images": "its document had more images than interleaved.max_images; the least similar go",
    "no_free_text": "assignment placement: every text of its document already has a more similar image",
    "document_dropped": "its document was dropped (detail: the document's reason)",
}
DUPLICATE_REASONS = {
    "duplicate_of": "another sample with the same or a near-identical image was kept",
}


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")
_IPV6_IN_BRACKETS = re.compile(r"\[[0-9A-Fa-f:.]+\]")  # curate.stages.address_policy.address_text


def reason(code: str, detail: object | None = None) -> str:
    """Build a reason string: ``code``, or ``code:detail`` with the detail reduced to
    ASCII letters, digits and ``._+-`` (runs of anything else become ``_``; at most 120
    characters). A detail that is an IPv6 address in brackets is kept whole. A detail left
    empty by this gives the bare code, never ``code:``."""
    if detail is None:
        return code
    text = str(detail)
    if not _IPV6_IN_BRACKETS.fullmatch(text):
        text = _UNSAFE.sub("_", text).strip("_")[:120]
    return f"{code}:{text}" if text else code


def fmt_threshold(value: float) -> str:
    """Thresholds render compactly and stably (0.28, not 0.28000000000000003)."""
    return f"{value:g}"
