"""Caption text facts for the caption rules: words, junk kind. No model.

The rules themselves are SQL over the stored facts (curate.stages.caption_rules), so a
refilter can change ``filters.min_caption_words`` and friends without re-reading a caption.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import regex

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


def fold_whitespace(text: str) -> str:
    """Whitespace runs folded to one space, trimmed: a caption as a training caption is written."""
    return " ".join(text.split())


def normalize_caption(caption: str) -> str:
    """NFKC, whitespace runs folded to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", caption).split())


def junk_kind(caption: str) -> str | None:
    """Why a (normalised, non-empty) caption is junk (file_name, url, boilerplate, mostly_symbols), or None."""
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


SPECIAL_TOKEN = "special_token"  # the junk kind of a caption holding a model's control token


def holds_special_token(caption: str, tokens: tuple[str, ...] | list[str]) -> bool:
    """Whether ``caption`` holds one of ``tokens`` (``filters.special_tokens``), as written or
    after NFKC (a fullwidth ``＜image＞`` is ``<image>`` to a tokenizer that normalises)."""
    if not tokens:
        return False
    folded = unicodedata.normalize("NFKC", caption)
    return any(token in caption or token in folded for token in tokens)


def caption_facts(caption: str | None, max_chars: int,
                  special_tokens: tuple[str, ...] | list[str] = ()) -> tuple[int, int, str | None]:
    """(characters, words, junk kind) of a caption, as the caption rules read them. A caption
    holding one of ``special_tokens`` is junk of kind ``special_token`` before any other kind.

    A caption longer than ``max_chars`` (``filters.max_caption_chars``) is not normalised or
    matched: words and junk are left at 0 and None (it fails on its length first, and a
    multi-megabyte caption costs nothing more)."""
    chars = len(caption or "")
    if chars > max_chars:
        return chars, 0, None
    text = normalize_caption(caption or "")
    if holds_special_token(caption or "", special_tokens):
        return chars, count_words(text), SPECIAL_TOKEN
    return chars, count_words(text), junk_kind(text) if text else None
