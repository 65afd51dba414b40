"""Reason codes: the machine-readable ``reason`` of every manifest row.

A reason is ``code`` or ``code:detail`` (``http_404``, ``clip_score_below:0.28``,
``duplicate_of:00000-0000000042``), so it groups with ``split_part(reason, ':', 1)``. A
detail built by :func:`reason` is ASCII letters, digits and ``._+-`` only, so a reason is
safe to print whatever text it was built from (a server's error message, say); the one
exception is an IPv6 address, written in brackets as in a URL (``private_host:[::1]``),
whose colons stay. The detail is everything after the first ``:``.

Every code curate can emit is a :class:`Code` in :data:`CODES`, with the status it goes with
and its meaning; docs/manifest.md documents exactly these (``tests/test_vocabulary.py``), and
:func:`reason` refuses a code that is not here, so a new code cannot reach a manifest
undocumented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from curate.schemas.status import Status


@dataclass(frozen=True)
class Code:
    """One reason code. ``name`` is the code as written (``http_<code>`` stands for a family:
    ``http_404``, ``http_503``, ...); ``scope`` is ``row`` for a manifest row's reason,
    ``caption`` for the reason of one candidate caption inside ``captions``."""

    name: str
    status: Status
    meaning: str
    scope: str = "row"

    def __call__(self, detail: object | None = None) -> str:
        """The reason string, e.g. ``CLIP_SCORE_BELOW(0.28) == 'clip_score_below:0.28'``."""
        return reason(self.name, detail)

    def sql(self, detail: object | None = None) -> str:
        """The reason as a SQL string literal."""
        return "'" + self(detail).replace("'", "''") + "'"

    def sql_with(self, detail_sql: str) -> str:
        """SQL for the reason whose detail is the value of ``detail_sql``, cleaned like :func:`reason`."""
        return f"{self.sql()} || ':' || {sql_clean_detail(detail_sql)}"

    def matches(self, code: str) -> bool:
        if "<" in self.name:
            return re.fullmatch(re.sub(r"<[^>]+>", r"\\d+", self.name), code) is not None
        return code == self.name


B, D, F, U = Status.BLOCKED, Status.DOWNLOAD_FAILED, Status.FILTERED, Status.DUPLICATE

# -- blocked: never fetched ------------------------------------------------------------------
URL_MISSING = Code("url_missing", B, "the url cell is NULL or empty")
URL_INVALID = Code("url_invalid", B, "unparsable URL, no host, control characters, or bytes that were not UTF-8")
SCHEME_NOT_ALLOWED = Code("scheme_not_allowed", B, "only http and https are fetched (detail: the scheme)")
PRIVATE_HOST = Code("private_host", B, "an address in a special-purpose range (detail: the address, IPv6 in brackets)")
REDIRECT_TO_PRIVATE_HOST = Code("redirect_to_private_host", B, "a redirect led to such an address; not followed")
# -- download_failed -------------------------------------------------------------------------
HTTP_STATUS = Code("http_<code>", D, "the server answered with this HTTP status")
TIMEOUT = Code("timeout", D, "no complete answer in time")
SHARD_TIMEOUT = Code("shard_timeout", D, "not fetched before its download shard's deadline (download.shard_timeout)")
CONNECTION_ERROR = Code("connection_error", D, "DNS or connection failure")
TOO_MANY_REDIRECTS = Code("too_many_redirects", D, "a redirect loop or too long a redirect chain")
NOT_AN_IMAGE = Code("not_an_image", D, "the body is not a decodable image")
IMAGE_TOO_LARGE = Code("image_too_large", D, "declared pixel count above download.max_image_pixels")
BODY_TOO_LARGE = Code("body_too_large", D, "the body exceeds download.max_body_bytes")
OPTED_OUT = Code("opted_out", D, "an X-Robots-Tag forbids the use")
INCOMPLETE_BODY = Code("incomplete_body", D, "the connection ended before Content-Length bytes came")
CONTENT_ENCODING_INVALID = Code("content_encoding_invalid", D, "the body does not decode as its Content-Encoding says")
CONTENT_ENCODING_UNSUPPORTED = Code("content_encoding_unsupported", D, "a Content-Encoding other than gzip, deflate, br, zstd")
BAD_HTTP_RESPONSE = Code("bad_http_response", D, "the answer is not valid HTTP")
INVALID_REQUEST = Code("invalid_request", D, "urllib refused to send the request (a URL it can't encode, a bad port)")
TLS_ERROR = Code("tls_error", D, "a TLS or certificate failure")
RESIZE_ERROR = Code("resize_error", D, "the image decoded but img2dataset's resizer (cv2) failed on it")
DOWNLOAD_ERROR = Code("download_error", D, "any other download error (the message is in RUN/downloaded's error_message)")
MISSING_FROM_DOWNLOADER = Code("missing_from_downloader", D, "the downloader returned no row for this sample")
# -- filtered: image rules -------------------------------------------------------------------
IMAGE_TOO_SMALL = Code("image_too_small", F, "shorter original side below filters.min_side")
ASPECT_RATIO_ABOVE = Code("aspect_ratio_above", F, "long/short side above filters.max_aspect_ratio")
IMAGE_SIDE_ABOVE = Code("image_side_above", F, "longer original side above filters.max_side")
# -- filtered: caption rules (a row's reason, and a candidate caption's) ----------------------
CAPTION_BAD_ENCODING = Code("caption_bad_encoding", F, "the caption was not valid UTF-8")
CAPTION_EMPTY = Code("caption_empty", F, "the caption is NULL or only whitespace")
CAPTION_JUNK = Code("caption_junk", F, "a file name, boilerplate, a bare URL, mostly symbols or a model's special token (detail: which)")
CAPTION_TOO_SHORT = Code("caption_too_short", F, "fewer words than filters.min_caption_words")
CAPTION_TOO_LONG = Code("caption_too_long", F, "more words than filters.max_caption_words, more characters "
                                               "than filters.max_caption_chars, or more tokens in a text model's "
                                               "tokenizer than filters.max_caption_tokens")
# -- filtered: model scores -----------------------------------------------------------------
CLIP_SCORE_BELOW = Code("clip_score_below", F, "clip_score below clip.min_score")
AESTHETIC_SCORE_BELOW = Code("aesthetic_score_below", F, "aesthetic_score below aesthetic.min_score")
ITM_PROB_BELOW = Code("itm_prob_below", F, "itm_prob below itm.min_prob (capfilt.synthetic_min_prob for synthetic captions)")
# -- filtered: the caption decision (CapFilt) -------------------------------------------------
NO_CAPTION_PASSED = Code("no_caption_passed", F, "neither the original nor any synthetic caption passed")
NO_SYNTHETIC_CAPTION = Code("no_synthetic_caption", F, "caption_only: the captioner produced nothing usable")
CAPTION_ONLY_MODE = Code("caption_only_mode", F, "caption_only does not use the input's captions (the original, "
                                                 "its alternates)", scope="caption")
JUDGED_BELOW_ORIGINAL = Code("judged_below_original", F, "a synthetic caption this judge scores no higher than the "
                             "original it would replace (detail: clip_score or itm_prob)", scope="caption")
# -- documents runs: a document's reasons ----------------------------------------------------
MALFORMED_DOCUMENT = Code("malformed_document", F, "the row is not a document of input.documents.layout")
TOO_FEW_IMAGES = Code("too_few_images", F, "fewer images left than interleaved.min_images")
TOO_FEW_WORDS = Code("too_few_words", F, "fewer words of text than interleaved.min_words")
TOO_MANY_WORDS = Code("too_many_words", F, "more words of text than interleaved.max_words")
TOO_MANY_IMAGES = Code("too_many_images", F, "more valid images than interleaved.max_document_images")
IMAGE_TEXT_RATIO_BELOW = Code("image_text_ratio_below", F, "kept images per word below interleaved.min_image_text_ratio")
IMAGE_TEXT_RATIO_ABOVE = Code("image_text_ratio_above", F, "kept images per word above interleaved.max_image_text_ratio")
# -- documents runs: an image's reasons ------------------------------------------------------
SIM_BELOW = Code("sim_below", F, "best CLIP cosine to any text of its document below interleaved.min_sim")
ITM_BELOW = Code("itm_below", F, "no shortlisted text of its document has ITM P(match) >= interleaved.min_itm")
DOCUMENT_HAS_NO_TEXT = Code("document_has_no_text", F, "its document has no text to place it next to")
OVER_MAX_IMAGES = Code("over_max_images", F, "its document had more images than interleaved.max_images")
NO_FREE_TEXT = Code("no_free_text", F, "assignment placement: every text already has a more similar image")
DOCUMENT_DROPPED = Code("document_dropped", F, "its document was dropped (detail: the document's reason)")
# -- duplicate -------------------------------------------------------------------------------
DUPLICATE_OF = Code("duplicate_of", U, "the same or a near-identical image was kept (detail: its sample_id)")
SAME_URL_AS = Code("same_url_as", U, "its URL is another row's, fetched once for both: its caption is one of that "
                                     "sample's captions (detail: the sample's sample_id)")
SAME_URL_NOT_SCORED = Code("same_url_not_scored", U, "its URL is another row's, which had input.max_captions_per_url "
                                                     "captions already (or was scored before this row's input file "
                                                     "joined the run: --extend): its caption was not scored (detail: "
                                                     "the sample)")

CODES: tuple[Code, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Code))


def lookup(code: str) -> Code:
    """The :class:`Code` of a code string (``http_404`` -> ``http_<code>``); ValueError if none."""
    for item in CODES:
        if item.matches(code):
            return item
    raise ValueError(f"{code!r} is not a reason code of curate.schemas.reasons; add it there and to docs/manifest.md")


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")
_IPV6_IN_BRACKETS = re.compile(r"\[[0-9A-Fa-f:.]+\]")  # curate.download.address_policy.address_text
MAX_DETAIL_CHARS = 120


def reason(code: str, detail: object | None = None) -> str:
    """``code`` or ``code:detail``. The code must be one of :data:`CODES` (ValueError
    otherwise). The detail is reduced to ASCII letters, digits and ``._+-`` (runs of
    anything else become '_') and cut to 120 characters, so ``split_part(reason, ':', 1)``
    is always the code and a reason never carries markup or control characters; a detail
    that is an IPv6 address in brackets is kept whole. A detail left empty gives the bare
    code, never ``code:``."""
    lookup(code)
    if detail is None:
        return code
    text = str(detail)
    if not _IPV6_IN_BRACKETS.fullmatch(text):
        text = _UNSAFE.sub("_", text).strip("_")[:MAX_DETAIL_CHARS]
    return f"{code}:{text}" if text else code


def sql_clean_detail(expr: str) -> str:
    """SQL that cleans a detail as :func:`reason` does (for details that are not addresses)."""
    return f"left(trim(regexp_replace({expr}, '[^A-Za-z0-9._+\\-]+', '_', 'g'), '_'), {MAX_DETAIL_CHARS})"


def fmt_threshold(value: float) -> str:
    """Thresholds render compactly and stably (0.28, not 0.28000000000000003)."""
    return f"{value:g}"
