"""Caption text facts for the caption rules: words, junk kind. No model.

The rules themselves are SQL over the stored facts (curate.stages.caption_rules), so a
refilter can change ``filters.min_caption_words`` and friends without re-reading a caption.
"""

from __future__ import annotations

import re
import unicodedata

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
JUNK_KINDS = ("file_name", "url", "boilerplate", "mostly_symbols")


def normalize_caption(caption: str) -> str:
    """NFKC, whitespace runs folded to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", caption).split())


def count_words(text: str) -> int:
    """Words of a normalised caption."""
    return len(text.split())


def junk_kind(caption: str) -> str | None:
    """Why a (normalised, non-empty) caption is junk (one of JUNK_KINDS), or None."""
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


def caption_facts(caption: str | None, max_chars: int) -> tuple[int, int, str | None]:
    """(characters, words, junk kind) of a caption, as the caption rules read them.

    A caption longer than ``max_chars`` (``filters.max_caption_chars``) is not normalised or
    matched: words and junk are left at 0 and None (it fails on its length first, and a
    multi-megabyte caption costs nothing more)."""
    chars = len(caption or "")
    if chars > max_chars:
        return chars, 0, None
    text = normalize_caption(caption or "")
    return chars, count_words(text), junk_kind(text) if text else None
