"""Cheap filters: rules on image size and caption text, no model.

Image rules reject the sample (``image_reject``). Caption rules reject only the original
caption (``caption_reject``): with CapFilt on, a good image with junk alt-text can still
be kept with a synthetic caption, so the final decision is taken in the manifest.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import regex

from curate.core.config import FilterConfig
from curate.schemas.status import fmt_threshold, reason

_IMAGE_EXT = r"(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)"
_FILE_NAME = re.compile(rf"^[\w\-. ()]*\.{_IMAGE_EXT}$", re.IGNORECASE)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dcim|pict|pic|photo|image|screenshot|screen shot|pxl|mvimg|gopr)[\s_\-]*\d+", re.IGNORECASE)
_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
# Alt-text that says nothing about the picture: placeholders, UI and shop boilerplate.
_BOILERPLATE = {
    "image", "images", "img", "photo", "photos", "picture", "pic", "untitled", "untitled image",
    "no description", "no image", "no alt text", "alt", "alt text", "null", "none", "n/a", "na",
    "undefined", "thumbnail", "thumb", "placeholder", "logo", "banner", "icon", "spacer",
    "loading", "click here", "click to enlarge", "read more", "learn more", "buy now", "shop now",
    "add to cart", "view product", "see more", "default", "featured image", "image not found",
}
_BOILERPLATE_PREFIXES = ("click here", "buy now", "shop now", "add to cart", "free shipping", "sale ")


def image_reject(width: int | None, height: int | None, cfg: FilterConfig) -> str | None:
    """Reason to reject by the original image size, or None. Missing sizes pass (no evidence)."""
    if not width or not height:
        return None
    short, long = sorted((int(width), int(height)))
    if short < cfg.min_side:
        return reason("image_too_small", cfg.min_side)
    if long / max(short, 1) > cfg.max_aspect_ratio:
        return reason("aspect_ratio_above", fmt_threshold(cfg.max_aspect_ratio))
    return None


# Scripts written without spaces between words: a whitespace split sees one "word" per
# sentence. ICU's word segmenter knows their words (dictionaries for Chinese, Japanese,
# Thai, Lao, Khmer, Burmese). Korean puts spaces between words: the split is right there.
_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_segmenters = threading.local()


def _segmented_words(token: str) -> int:
    """Words ICU's (UAX #29 + dictionary) word segmenter finds in ``token``, punctuation left out."""
    breaker = getattr(_segmenters, "word", None)
    if breaker is None:
        import icu  # PyICU

        breaker = _segmenters.word = icu.BreakIterator.createWordInstance(icu.Locale.getRoot())
    breaker.setText(token)
    words = 0
    for _ in breaker:
        words += breaker.getRuleStatus() != 0  # status 0 (UBRK_WORD_NONE): spaces, punctuation
    return max(words, 1)


def count_words(text: str) -> int:
    """Words in ``text``, per script: whitespace-separated tokens, except that a token with
    letters of a script written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer,
    Myanmar) counts the words ICU's word segmenter finds in it (``一只红色的自行车靠在墙上``
    is 8 words: 一只/红色/的/自行/车/靠在/墙/上). ``iPhone 15 发布会`` is 4."""
    return sum(_segmented_words(token) if _UNSPACED.search(token) else 1 for token in text.split())


def normalize_caption(caption: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", caption).split())


def junk_kind(caption: str) -> str | None:
    """Why a (normalised, non-empty) caption is junk, or None."""
    lowered = caption.lower().strip(" .!:-_|")
    if _FILE_NAME.match(caption) or _CAMERA_NAME.match(caption):
        return "file_name"
    if _URL.search(caption) and len(_URL.sub("", caption).split()) < 2:
        return "url"
    if lowered in _BOILERPLATE or lowered.startswith(_BOILERPLATE_PREFIXES):
        return "boilerplate"
    letters = sum(ch.isalpha() for ch in caption)
    if letters < 0.5 * len(caption.replace(" ", "")):
        return "mostly_symbols"
    return None


def caption_reject(caption: str | None, bad_encoding: bool, cfg: FilterConfig) -> str | None:
    """Reason to reject the original caption, or None."""
    if bad_encoding:
        return reason("caption_bad_encoding")
    if caption and len(caption) > cfg.max_caption_chars:
        # before normalising or matching: a multi-megabyte caption costs nothing more
        return reason("caption_too_long", f"{cfg.max_caption_chars} chars")
    text = normalize_caption(caption or "")
    if not text:
        return reason("caption_empty")
    if cfg.junk_captions:
        kind = junk_kind(text)
        if kind:
            return reason("caption_junk", kind)
    words = count_words(text)
    if words < cfg.min_caption_words:
        return reason("caption_too_short", cfg.min_caption_words)
    if words > cfg.max_caption_words:
        return reason("caption_too_long", cfg.max_caption_words)
    return None
